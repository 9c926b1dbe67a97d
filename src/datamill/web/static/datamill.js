/* datamill's page script: confirmations and uploads. No framework; htmx does the rest. */
"use strict";
(function () {
  /* A form or button with data-confirm asks before it submits. */
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  }, true);
})();
