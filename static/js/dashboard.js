// Dashboard charts (docs/console.md#dashboard), drawn with the vendored Chart.js from the data the
// page carries in <script type="application/json"> blocks (json_script). No inline scripts: CSP.
// Each <canvas data-chart="ID"> reads the JSON block ID: {kind, labels, values, unit, ...}.
// Amounts arrive as exact decimal strings; the tables beside the charts show them exactly.
(function () {
  "use strict";

  var ACCENT = "#4f46e5";
  var TOKENS = "#0d9488";
  var PALETTE = ["#4f46e5", "#0d9488", "#d97706", "#db2777", "#2563eb", "#65a30d", "#7c3aed", "#dc2626", "#0891b2", "#6b7280"];

  function usd(value) {
    var places = Math.abs(value) > 0 && Math.abs(value) < 0.01 ? 4 : 2;
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places });
  }

  function count(value) {
    return Math.round(value).toLocaleString("en-US");
  }

  function compact(value) {
    return value.toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 1 });
  }

  function numbers(list) {
    return list.map(function (value) { return parseFloat(value); });
  }

  function trendConfig(spec) {
    return {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: [
          { type: "bar", label: "Charged", data: numbers(spec.values), backgroundColor: ACCENT, yAxisID: "cost", order: 2 },
          { type: "line", label: "Tokens", data: numbers(spec.tokens), borderColor: TOKENS, backgroundColor: TOKENS,
            pointRadius: 2, borderWidth: 2, tension: 0.25, yAxisID: "tokens", order: 1 }
        ]
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          cost: { position: "left", beginAtZero: true, ticks: { callback: function (v) { return usd(v); } } },
          tokens: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
                    ticks: { callback: function (v) { return compact(v); } } },
          x: { ticks: { autoSkip: true, maxRotation: 0 } }
        },
        plugins: {
          tooltip: {
            callbacks: {
              title: function (items) { return spec.titles[items[0].dataIndex]; },
              label: function (item) {
                return item.dataset.yAxisID === "cost" ? "Charged: " + usd(item.parsed.y) : "Tokens: " + count(item.parsed.y);
              }
            }
          }
        }
      }
    };
  }

  function doughnutConfig(spec) {
    return {
      type: "doughnut",
      data: { labels: spec.labels, datasets: [{ data: numbers(spec.values), backgroundColor: PALETTE, borderWidth: 1 }] },
      options: {
        plugins: {
          legend: { position: window.matchMedia("(min-width: 576px)").matches ? "right" : "bottom",
                    labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: function (item) { return " " + usd(item.parsed); } } }
        }
      }
    };
  }

  function barConfig(spec) {
    return {
      type: "bar",
      data: { labels: spec.labels, datasets: [{ label: "Charged", data: numbers(spec.values), backgroundColor: ACCENT }] },
      options: {
        indexAxis: "y",
        scales: {
          x: { beginAtZero: true, ticks: { callback: function (v) { return usd(v); } } },
          y: { ticks: { callback: function (index) {
            var label = spec.labels[index] || "";
            return label.length > 24 ? label.slice(0, 23) + "…" : label;
          } } }
        },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { title: function (items) { return spec.labels[items[0].dataIndex]; },
                                  label: function (item) { return "Charged: " + usd(item.parsed.x); } } }
        }
      }
    };
  }

  var BUILDERS = { trend: trendConfig, doughnut: doughnutConfig, bar: barConfig };

  function draw(canvas) {
    if (typeof window.Chart === "undefined" || window.Chart.getChart(canvas)) return;
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source) return;
    var spec = JSON.parse(source.textContent);
    var config = BUILDERS[spec.kind](spec);
    config.options.responsive = true;
    config.options.maintainAspectRatio = false;
    config.options.animation = false;
    new window.Chart(canvas, config);
  }

  function drawAll() {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  // A swap replaces canvases: free the charts drawn on the old ones, draw the new ones.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!event.detail.target || typeof window.Chart === "undefined") return;
    event.detail.target.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var chart = window.Chart.getChart(canvas);
      if (chart) chart.destroy();
    });
  });
  document.addEventListener("htmx:afterSettle", drawAll);

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
