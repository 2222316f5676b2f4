// Channel form: model chips, and the catalog's default prices filled in as a model is typed.
// No inline scripts (CSP). The server stays the source of truth: chips only mirror the text.
(function () {
  "use strict";

  var PRICE_FIELDS = [
    "input_price", "output_price", "cache_write_price", "cache_write_1h_price", "cache_read_price", "image_output_price",
  ];
  var MTOK_PLACES = 6; // USD per token -> per million tokens
  var timers = new WeakMap();

  function splitModels(text) {
    return text.split(/[\n,]/).map(function (name) { return name.trim(); }).filter(Boolean);
  }

  // Exact decimal arithmetic on strings: "0.00000375" -> "3.75". No float ever touches a price.
  function perTokenToPerMTok(text) {
    var match = /^(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
    if (!match || (match[1] === "" && !match[2])) return null;
    var fraction = match[2] || "";
    while (fraction.length < MTOK_PLACES) fraction += "0";
    var whole = ((match[1] || "0") + fraction.slice(0, MTOK_PLACES)).replace(/^0+(?=\d)/, "");
    var rest = fraction.slice(MTOK_PLACES).replace(/0+$/, "");
    return rest ? whole + "." + rest : whole;
  }

  function field(card, name) {
    return card.querySelector('[name="' + card.dataset.prefix + "-" + name + '"]');
  }

  function renderChips(card) {
    var list = card.querySelector(".model-chips");
    if (!list) return;
    var chips = splitModels(field(card, "models").value).map(function (name) {
      var chip = document.createElement("li");
      chip.className = "model-chip" + (name.slice(-1) === "*" ? " wildcard" : "");
      var label = document.createElement("span");
      label.textContent = name;
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.setAttribute("data-remove-model", name);
      remove.setAttribute("aria-label", "Remove " + name);
      remove.textContent = "\u00d7";
      chip.append(label, remove);
      return chip;
    });
    list.replaceChildren.apply(list, chips);
  }

  // A price field may be filled when it is empty or still holds what we filled in last time.
  function fillable(input) {
    return input.value.trim() === "" || input.dataset.autofilled === input.value;
  }

  function forget(input) {
    delete input.dataset.autofilled;
    input.classList.remove("autofilled");
  }

  function say(card, text, kind) {
    var line = card.querySelector("[data-catalog-source]");
    line.textContent = text;
    line.className = "catalog-source small" + (kind ? " " + kind : "");
  }

  function showTiersButton(card, tiers) {
    var button = card.querySelector("[data-catalog-intervals]");
    if (!button) return;
    var show = tiers.length > 0 && field(card, "billing_mode").value === "token";
    button.classList.toggle("d-none", !show);
    if (show) {
      var start = Math.round(tiers[0].min_tokens / 1000);
      button.lastChild.textContent = " Add the catalog's long-context intervals (above " + start + "K tokens)";
    }
  }

  var PLATFORM_NAMES = { anthropic: "Anthropic", openai: "OpenAI", gemini: "Gemini", antigravity: "Antigravity" };

  // A new card takes its platform from the model's vendor until the operator picks one; any
  // other card says when the model's vendor is not the card's platform.
  function matchPlatform(card, name, data) {
    var select = field(card, "platform");
    var warning = card.querySelector("[data-platform-warning]");
    if (!select || !warning) return "";
    var vendor = data.found ? data.platform : null;
    if (!vendor || vendor === select.value) {
      warning.textContent = "";
      return "";
    }
    if (card.hasAttribute("data-new") && !select.dataset.chosen) {
      select.value = vendor;
      warning.textContent = "";
      return " Platform set to " + (PLATFORM_NAMES[vendor] || vendor) + ", the model's vendor.";
    }
    warning.textContent = "\u201c" + name + "\u201d is " + (PLATFORM_NAMES[vendor] || vendor) +
      "'s model, but this card is for " + (PLATFORM_NAMES[select.value] || select.value) + ".";
    return "";
  }

  function apply(card, name, data) {
    var filled = 0;
    var kept = 0;
    PRICE_FIELDS.forEach(function (key) {
      var input = field(card, key);
      if (!input) return;
      var value = data.found && data[key] != null ? perTokenToPerMTok(data[key]) : null;
      if (!fillable(input)) {
        if (value !== null) kept += 1;
        return;
      }
      if (value === null) {
        if (input.dataset.autofilled !== undefined) input.value = "";
        forget(input);
        return;
      }
      input.value = value;
      input.dataset.autofilled = value;
      input.classList.add("autofilled");
      filled += 1;
    });
    var platform = matchPlatform(card, name, data);
    var catalog = " (" + data.catalog + ")";
    if (!data.found) {
      say(card, "No catalog default for \u201c" + name + "\u201d in " + data.catalog + ": enter the prices yourself.", "missing");
    } else if (filled === 0) {
      say(card, "Found the " + data.source + catalog + "; the prices you typed were kept." + platform, "found");
    } else {
      say(card, "Prices filled in from the " + data.source + catalog + (kept ? "; the prices you typed were kept." : ".") + platform, "found");
    }
    showTiersButton(card, data.found ? data.tiers || [] : []);
  }

  function lookup(card) {
    var form = card.closest("form");
    var url = form && form.dataset.pricingDefaultsUrl;
    var first = splitModels(field(card, "models").value)[0] || "";
    if (field(card, "billing_mode").value !== "token") {
      // Catalog defaults are token prices; per-request and image cards are priced by hand.
      card.dataset.lookedUp = "";
      say(card, "", "");
      showTiersButton(card, []);
      return;
    }
    if (!url || card.dataset.lookedUp === first) return;
    card.dataset.lookedUp = first;
    if (!first) {
      say(card, "", "");
      showTiersButton(card, []);
      return;
    }
    fetch(url + "?model=" + encodeURIComponent(first), {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        if (card.dataset.lookedUp === first) apply(card, first, data); // ignore answers to older names
      })
      .catch(function () {
        card.dataset.lookedUp = "";
        say(card, "Could not reach the price catalog; enter the prices yourself.", "missing");
      });
  }

  function schedule(card) {
    clearTimeout(timers.get(card));
    timers.set(card, setTimeout(function () { lookup(card); }, 300));
  }

  document.addEventListener("input", function (event) {
    var target = event.target;
    var card = target.closest && target.closest(".pricing-card");
    if (!card) return;
    if (target.matches(".models-input")) {
      renderChips(card);
      schedule(card);
    } else if (target.dataset.autofilled !== undefined) {
      forget(target); // the operator typed here: never overwrite it again
    }
  });

  document.addEventListener("change", function (event) {
    var card = event.target.closest && event.target.closest(".pricing-card");
    if (card && event.target.matches(".billing-mode")) {
      card.dataset.lookedUp = "";
      lookup(card);
    }
    if (card && event.target === field(card, "platform")) {
      event.target.dataset.chosen = "yes"; // the operator's choice: never changed for them again
      card.dataset.lookedUp = "";
      lookup(card);
    }
  });

  document.addEventListener("click", function (event) {
    var remove = event.target.closest("[data-remove-model]");
    if (!remove) return;
    var card = remove.closest(".pricing-card");
    var input = field(card, "models");
    var name = remove.getAttribute("data-remove-model");
    var names = splitModels(input.value);
    names.splice(names.indexOf(name), 1);
    input.value = names.join(", ");
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.focus();
  });

  // The long-context button adds the rows once; hide it when they have arrived.
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    if (elt.matches && elt.matches("[data-catalog-intervals]") && event.detail.successful) {
      elt.classList.add("d-none");
    }
  });
})();
