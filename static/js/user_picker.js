// The user picker (templates/accounts/user_picker.html): Add moves a search result into the
// chosen list as a hidden input; × takes it out again. No inline scripts or styles (CSP).
(function () {
  "use strict";

  function chip(picker, id, email) {
    var item = document.createElement("li");
    item.className = "picked-user";
    var input = document.createElement("input");
    input.type = "hidden";
    input.name = picker.getAttribute("data-name");
    input.value = id;
    var label = document.createElement("span");
    label.textContent = email;
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chip-remove";
    remove.setAttribute("data-unpick", "");
    remove.setAttribute("aria-label", "Remove " + email);
    remove.textContent = "\u00d7";
    item.append(input, label, remove);
    return item;
  }

  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-pick-user]");
    var picker = event.target.closest("[data-user-picker]");
    if (add && picker) {
      var id = add.getAttribute("data-pick-user");
      var list = picker.querySelector(".picked-users");
      if (!list.querySelector('input[value="' + CSS.escape(id) + '"]')) {
        list.appendChild(chip(picker, id, add.getAttribute("data-user-email")));
      }
      add.closest("li").remove();
      picker.querySelector("input[type=search]").focus();
      return;
    }
    var unpick = event.target.closest("[data-unpick]");
    if (unpick && picker) {
      unpick.closest("li").remove();
      picker.querySelector("input[type=search]").focus();
    }
  });

  // Enter in the search box adds the first match for what is typed now (waiting for the answer
  // if it is still on its way) instead of submitting the whole form.
  function firstMatch(picker) {
    var input = picker.querySelector("input[type=search]");
    var first = picker.querySelector("[data-pick-user]");
    return first && first.getAttribute("data-query") === input.value.trim() ? first : null;
  }

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !event.target.matches("[data-user-picker] input[type=search]")) return;
    event.preventDefault();
    var picker = event.target.closest("[data-user-picker]");
    var first = firstMatch(picker);
    if (first) first.click();
    else picker.dataset.pickFirst = "yes";
  });

  document.addEventListener("input", function (event) {
    var picker = event.target.closest && event.target.closest("[data-user-picker]");
    if (picker) delete picker.dataset.pickFirst; // typing on cancels a pending Enter
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var picker = event.detail.target && event.detail.target.closest("[data-user-picker]");
    if (!picker || !picker.dataset.pickFirst) return;
    var first = firstMatch(picker);
    if (!first) return; // an older answer: keep waiting for the one for what is typed now
    delete picker.dataset.pickFirst;
    first.click();
  });
})();
