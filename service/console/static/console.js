// Keyledger console: a little progressive enhancement. Every page works without it.
(function () {
  "use strict";

  // "Copy" next to a secret: to the clipboard, and say so to screen readers.
  function say(text) {
    var status = document.getElementById("copy-status");
    if (status) { status.textContent = text; }
  }
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) { return; }
      var done = function () { say("Copied to the clipboard."); button.textContent = "Copied"; };
      var fallback = function () {
        field.focus();
        field.select();
        try { document.execCommand("copy"); done(); } catch (e) { say("Select the secret and copy it (Ctrl+C or ⌘C)."); }
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(field.value).then(done, fallback);
      } else {
        fallback();
      }
    });
  });

  // Scope presets: choosing one ticks its scopes; ticking a box by hand means "choose scopes".
  document.querySelectorAll("fieldset.scopes").forEach(function (fieldset) {
    var boxes = fieldset.querySelectorAll("input[name=scope]");
    var custom = fieldset.querySelector("input[name=preset][value=custom]");
    fieldset.querySelectorAll("input[name=preset]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        var wanted = radio.getAttribute("data-scopes");
        if (wanted === null) { return; }
        var names = wanted.split(" ");
        boxes.forEach(function (box) { box.checked = names.indexOf(box.value) !== -1; });
      });
    });
    boxes.forEach(function (box) {
      box.addEventListener("change", function () { if (custom) { custom.checked = true; } });
    });
  });
})();
