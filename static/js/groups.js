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
