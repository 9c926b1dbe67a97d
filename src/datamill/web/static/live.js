/* datamill's live pages: rows pushed by the server (server-sent events) and followed task logs. */
"use strict";
(function () {
  /* <tbody data-live="URL" data-live-event="NAME" data-live-max="N">: each message is one <tr id=...>
     rendered by the server; it replaces the row with its id, or is put first. */
  function liveTable(body) {
    var source = new EventSource(body.getAttribute("data-live"));
    var max = parseInt(body.getAttribute("data-live-max") || "100", 10);
    var status = document.getElementById("live-status");
    source.addEventListener(body.getAttribute("data-live-event") || "message", function (ev) {
      var holder = document.createElement("tbody");
      holder.innerHTML = ev.data;
      var row = holder.firstElementChild;
      if (!row) { return; }
      var old = row.id ? document.getElementById(row.id) : null;
      if (old) { old.replaceWith(row); } else { body.insertBefore(row, body.firstElementChild); }
      while (body.children.length > max) { body.removeChild(body.lastElementChild); }
      var empty = document.getElementById("live-empty");
      if (empty) { empty.remove(); }
    });
    source.addEventListener("error", function () {
      if (status && source.readyState === EventSource.CLOSED) { status.textContent = "Live updates stopped; reload the page."; }
    });
  }

  /* <pre data-log="URL">: the task's log, streamed until the task ends. */
  function followLog(pre) {
    fetch(pre.getAttribute("data-log"), { credentials: "same-origin" }).then(function (answer) {
      if (!answer.ok || !answer.body) { pre.textContent = "The log could not be read (" + answer.status + ")."; return; }
      var reader = answer.body.getReader();
      var decoder = new TextDecoder();
      pre.setAttribute("data-state", "following");
      function more() {
        return reader.read().then(function (part) {
          if (part.done) { pre.setAttribute("data-state", "ended"); return; }
          var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.appendChild(document.createTextNode(decoder.decode(part.value, { stream: true })));
          if (atEnd) { pre.scrollTop = pre.scrollHeight; }
          return more();
        });
      }
      return more();
    }).catch(function () { pre.setAttribute("data-state", "failed"); });
  }

  function start() {
    document.querySelectorAll("[data-live]").forEach(liveTable);
    document.querySelectorAll("pre[data-log]").forEach(followLog);
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
