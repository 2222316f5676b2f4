// Usage log behaviour: row breakdowns and the period filter. No inline scripts (CSP).
(function () {
  "use strict";

  // A row's breakdown button: the first click loads the breakdown row over htmx
  // (hx-trigger="click once"); later clicks only show or hide the row already loaded.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-expand-row]");
    if (!button) return;
    var detail = document.getElementById(button.getAttribute("data-expand-row"));
    var open = detail ? detail.hidden : true;
    if (detail) detail.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    button.classList.toggle("active", open);
  });

  // The period select and the date inputs agree before the filter form is sent: typing a date
  // makes the range custom, picking a preset clears the dates. Capture phase, so this runs
  // before htmx reads the form on the same change event.
  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (!form || !form.elements.period) return;
    var name = event.target.name;
    if ((name === "date_from" || name === "date_to") && event.target.value) {
      form.elements.period.value = "custom";
    } else if (name === "period" && event.target.value !== "custom") {
      form.elements.date_from.value = "";
      form.elements.date_to.value = "";
    }
  }, true);
})();
