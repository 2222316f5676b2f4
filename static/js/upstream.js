// The account form: show the credential, quota and cache-TTL fields of the chosen platform and type.
// Without JavaScript every section shows and the server reads only the chosen one.
(function () {
  "use strict";

  var ANTHROPIC_ONLY = ["setup-token", "bedrock"];

  function show(element, visible, disableInputs) {
    element.hidden = !visible;
    if (!disableInputs) return;
    element.querySelectorAll("input, select, textarea").forEach(function (input) {
      input.disabled = !visible;
    });
  }

  function sync(form) {
    var platform = form.querySelector("[name=platform]").value;
    var type = form.querySelector("[name=type]").value;
    var mode = form.querySelector("[name=auth_mode]:checked");
    var section = type === "bedrock" ? "bedrock_" + (mode ? mode.value : "sigv4") : type.replace("-", "_");

    form.querySelectorAll("[data-section]").forEach(function (el) {
      show(el, el.getAttribute("data-section") === section, true);
    });
    form.querySelectorAll("[data-show-types]").forEach(function (el) {
      var types = el.getAttribute("data-show-types").split(" ");
      show(el, types.indexOf(type) !== -1, el.tagName === "FIELDSET");
    });
    var ttlAllowed = platform === "anthropic" && (type === "oauth" || type === "setup-token");
    form.querySelectorAll("[data-show-cache-ttl]").forEach(function (el) {
      show(el, ttlAllowed, false);
      if (!ttlAllowed) el.querySelector("select").value = "";
    });
    form.querySelectorAll("[data-fixed-of]").forEach(function (el) {
      var modeField = form.querySelector("[name=" + el.getAttribute("data-fixed-of") + "]");
      show(el, modeField.value === "fixed", false);
    });
    form.querySelectorAll("[name=type] option").forEach(function (option) {
      option.disabled = platform !== "anthropic" && ANTHROPIC_ONLY.indexOf(option.value) !== -1;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-account-form]").forEach(function (form) {
      sync(form);
      form.addEventListener("change", function () { sync(form); });
    });
  });
})();
