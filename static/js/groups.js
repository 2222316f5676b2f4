// The group list: drag rows to reorder (SortableJS), arrows for the keyboard.
// Both submit the same form: its hidden "ids" inputs in their new DOM order, to /groups/sort-order.
(function () {
  "use strict";

  var lastMove = null;

  function init(root) {
    root.querySelectorAll("#group-order tbody[data-sortable]").forEach(function (tbody) {
      if (tbody.sortable) return;
      var form = tbody.closest("form");
      tbody.sortable = window.Sortable.create(tbody, {
        handle: ".drag-handle",
        animation: 150,
        ghostClass: "drag-ghost",
        onEnd: function (event) {
          if (event.oldIndex === event.newIndex) return;
          tbody.sortable.option("disabled", true); // one order in flight at a time
          window.htmx.trigger(form, "groups:reorder");
        },
      });
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("#group-order [data-move-key]");
    if (button) lastMove = button.getAttribute("data-move-key");
  });

  // A refused order answers 400 with the unchanged list and the reason: show it.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status === 400 && event.detail.target && event.detail.target.id === "table") {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // Keep keyboard focus on the moved group's arrow (or its other arrow at either end).
  document.addEventListener("htmx:afterSettle", function (event) {
    if (!lastMove || !document.getElementById("group-order")) return;
    var parts = lastMove.split(":");
    var other = (parts[0] === "up" ? "down" : "up") + ":" + parts[1];
    var target = document.querySelector('[data-move-key="' + lastMove + '"]:not([disabled])') ||
      document.querySelector('[data-move-key="' + other + '"]');
    lastMove = null;
    if (target) target.focus();
  });

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (event) { init(event.detail.elt); });
})();

// The group form: "Add rule" appends a blank routing row from the formset's empty form.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    if (!event.target.closest("[data-add-routing-row]")) return;
    var total = document.getElementById("id_routing-TOTAL_FORMS");
    var template = document.getElementById("routing-empty-row");
    var index = parseInt(total.value, 10);
    var holder = document.createElement("div");
    holder.innerHTML = template.innerHTML.replace(/__prefix__/g, String(index));
    var row = holder.firstElementChild;
    document.getElementById("routing-rows").appendChild(row);
    total.value = String(index + 1);
    var first = row.querySelector("input[type=text]");
    if (first) first.focus();
  });
})();

// The group form: say under each subscription limit what it does as it is typed: 0 blocks all
// usage; a limit above a longer window's is never reached. The server says the same on save.
(function () {
  "use strict";
  var ORDER = ["daily", "weekly", "monthly"];

  function amount(input) {
    var text = input.value.trim().replace(",", ".");
    if (text === "" || isNaN(Number(text))) return null;
    return Number(text);
  }

  function update(form) {
    var inputs = {};
    ORDER.forEach(function (period) { inputs[period] = form.querySelector("[data-limit=" + period + "]"); });
    ORDER.forEach(function (period, position) {
      var input = inputs[period];
      var hint = input && document.getElementById(input.id + "_hint");
      if (!hint) return;
      var value = amount(input);
      var text = "";
      if (value === 0) {
        text = "0 blocks all usage: subscribers of this group cannot make any request.";
      } else if (value !== null) {
        for (var i = position + 1; i < ORDER.length; i++) {
          var cap = inputs[ORDER[i]] ? amount(inputs[ORDER[i]]) : null;
          if (cap !== null && cap > 0 && cap < value) {
            text = "Higher than the " + ORDER[i] + " limit ($" + inputs[ORDER[i]].value.trim() +
              "), which is reached first: the " + period + " limit never applies.";
            break;
          }
        }
      }
      hint.textContent = text;
    });
  }

  document.addEventListener("input", function (event) {
    if (event.target.matches && event.target.matches("[data-limit]")) update(event.target.form);
  });
})();

// The group form: fallback groups are offered for the chosen platform only (the server refuses
// another platform's group too); a fallback of the old platform is cleared when it changes.
(function () {
  "use strict";
  function sync(select) {
    var platform = document.getElementById(select.getAttribute("data-platform-of"));
    if (!platform) return;
    select.querySelectorAll("option[data-platform]").forEach(function (option) {
      var other = option.getAttribute("data-platform") !== platform.value;
      option.disabled = other;
      option.hidden = other;
      if (other && option.selected) select.value = "";
    });
  }
  function syncAll() { document.querySelectorAll("select[data-platform-of]").forEach(sync); }
  document.addEventListener("DOMContentLoaded", syncAll);
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("#id_platform")) syncAll();
  });
})();
