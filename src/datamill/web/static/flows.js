/* The dataflow form's folder picker: a dialog whose tree htmx loads; choosing a folder fills the field. */
"use strict";
(function () {
  var dialog = document.getElementById("picker");
  if (!dialog) { return; }
  var opener = null;
  document.addEventListener("click", function (ev) {
    var target = ev.target instanceof Element ? ev.target : null;
    var open = target && target.closest("[data-picker]");
    if (open) {
      opener = open;
      document.getElementById("picker-tree").innerHTML = "<p class=\"muted\">Loading…</p>";
      if (!dialog.open) { dialog.showModal(); }
      return;
    }
    var pick = target && target.closest("[data-pick]");
    if (pick) {
      var field = document.getElementById(pick.getAttribute("data-field"));
      field.value = pick.getAttribute("data-pick");
      field.dispatchEvent(new Event("change", { bubbles: true }));
      dialog.close();
      field.focus();
      return;
    }
    var expand = target && target.closest("button.open");
    if (expand) {
      var item = expand.closest("li");
      var shown = expand.getAttribute("aria-expanded") === "true";
      expand.setAttribute("aria-expanded", shown ? "false" : "true");
      expand.textContent = shown ? "▸" : "▾";
      if (shown) { item.querySelector(".sub").innerHTML = ""; ev.preventDefault(); ev.stopImmediatePropagation(); }
    }
  }, true);
  dialog.addEventListener("close", function () { if (opener) { opener.focus(); opener = null; } });
})();
