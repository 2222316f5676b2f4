// API key pages: expiry quick picks and the created-key dialog. No inline scripts: CSP forbids them.
(function () {
  "use strict";

  // "YYYY-MM-DDTHH:MM" for an instant on the wall clock of timeZone: what a datetime-local input holds.
  function wallClock(instant, timeZone) {
    var parts = {};
    new Intl.DateTimeFormat("en-CA", {
      timeZone: timeZone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hourCycle: "h23"
    }).formatToParts(instant).forEach(function (part) { parts[part.type] = part.value; });
    return parts.year + "-" + parts.month + "-" + parts.day + "T" + parts.hour + ":" + parts.minute;
  }

  // <button data-expiry-days="30" data-expiry-target="#id_expires_at">: now + 30 days, in the
  // zone the server reads the field in (data-timezone on the input). An empty count means "never".
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-expiry-target]");
    if (!button) return;
    var input = document.querySelector(button.getAttribute("data-expiry-target"));
    if (!input) return;
    var days = parseInt(button.getAttribute("data-expiry-days"), 10);
    input.value = days ? wallClock(new Date(Date.now() + days * 86400000), input.getAttribute("data-timezone") || "UTC") : "";
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });

  // Choosing a user re-renders the group field for them; a group picked while that request was
  // in flight is kept, as long as the new user may use it.
  var pickedGroup = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "group-field") {
      var select = event.detail.target.querySelector("select");
      pickedGroup = select ? select.value : null;
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    var field = document.getElementById("group-field");
    if (!pickedGroup || !field) return;
    var option = field.querySelector("select option[value='" + CSS.escape(pickedGroup) + "']");
    if (option && !option.disabled) option.selected = true;
    pickedGroup = null;
  });

  // The created-key dialog leads back to the key list however it is closed, Esc included,
  // so the filled-in create form is not left behind to be submitted twice.
  document.addEventListener("close", function (event) {
    var url = event.target.getAttribute && event.target.getAttribute("data-redirect-on-close");
    if (url) window.location.assign(url);
  }, true);
})();
