// Console behaviour shared by every page. No inline scripts: CSP forbids them.
(function () {
  "use strict";

  // A dialog rendered into #dialog-host opens as a modal.
  function openDialogs(root) {
    root.querySelectorAll("dialog.console-dialog").forEach(function (dialog) {
      if (!dialog.open) dialog.showModal();
      var focus = dialog.querySelector("[autofocus], input:not([type=hidden]), select, textarea, button[type=submit]");
      if (focus) focus.focus();
    });
  }

  function closeDialogs() {
    document.querySelectorAll("#dialog-host dialog").forEach(function (dialog) {
      if (dialog.open) dialog.close();
    });
    document.getElementById("dialog-host").replaceChildren();
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "dialog-host") openDialogs(event.detail.target);
  });

  // The server closes dialogs by answering 204 with HX-Trigger: {"dialog:close": …}.
  // Deferred: the other events of the same response are dispatched on the
  // dialog's form and must still bubble to body before the form is removed.
  document.body.addEventListener("dialog:close", function () { setTimeout(closeDialogs, 0); });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-dialog-close]")) closeDialogs();
  });

  document.addEventListener("close", function (event) {
    if (event.target.matches && event.target.matches("#dialog-host dialog")) {
      document.getElementById("dialog-host").replaceChildren();
    }
  }, true);

  // A toast for messages sent with HX-Trigger: {"toast": {"message": "...", "level": "success"}}.
  document.body.addEventListener("toast", function (event) {
    var host = document.getElementById("toast-host");
    var detail = event.detail || {};
    var toast = document.createElement("div");
    toast.className = "toast align-items-center text-bg-" + (detail.level || "success") + " border-0";
    toast.setAttribute("role", "status");
    var body = document.createElement("div");
    body.className = "d-flex";
    var text = document.createElement("div");
    text.className = "toast-body";
    text.textContent = detail.message || "Done.";
    body.appendChild(text);
    toast.appendChild(body);
    host.appendChild(toast);
    if (window.bootstrap) new window.bootstrap.Toast(toast, { delay: 4000 }).show();
  });

  // A search box already asked for the table while typing; the change event it fires on blur
  // would ask again and swap away whatever the user opened in the meantime.
  document.addEventListener("change", function (event) {
    if (event.target.matches(".filter-form input[type=search]")) event.stopPropagation();
  }, true);

  // Filter messages arrive out of band with the table (components/filter_errors.html):
  // mark each input invalid while its message slot has text, valid again when it is empty.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("[data-errors-for]").forEach(function (slot) {
      var input = document.getElementById(slot.getAttribute("data-errors-for"));
      var invalid = slot.textContent.trim() !== "";
      slot.classList.toggle("d-block", invalid);
      if (!input) return;
      input.classList.toggle("is-invalid", invalid);
      if (invalid) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    });
  });

  // Copy buttons: <button data-copy-target="#id">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy-target"));
    if (!source) return;
    var value = source.value !== undefined ? source.value : source.textContent;
    navigator.clipboard.writeText(value.trim()).then(function () {
      button.textContent = "Copied";
    });
  });

  // Bootstrap tooltips, including on content swapped in by htmx.
  function tooltips(root) {
    if (!window.bootstrap) return;
    root.querySelectorAll("[data-bs-toggle=tooltip]").forEach(function (el) {
      window.bootstrap.Tooltip.getOrCreateInstance(el);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { tooltips(document); });
  document.addEventListener("htmx:load", function (event) { tooltips(event.detail.elt); });
})();
