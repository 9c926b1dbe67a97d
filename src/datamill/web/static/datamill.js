/* datamill's page script: confirmations and uploads. No framework; htmx does the rest.
 *
 * Uploads go straight to the API (PUT /api/v1/content/FOLDER/NAME), streamed by the browser from
 * the file, with XHR upload progress per file and overall. The session cookie authenticates them
 * and the X-CSRF-Token header (from <body data-csrf>) proves they come from our own page.
 * A dropped directory keeps its structure: its subfolders are created first (POST /api/v1/folders).
 */
"use strict";
(function () {
  var PARALLEL = 3;

  document.addEventListener("submit", function (ev) {
    var question = ev.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  }, true);

  function csrf() { return document.body.getAttribute("data-csrf") || ""; }
  function encodePath(path) { return path.split("/").map(encodeURIComponent).join("/"); }
  function join(a, b) { return a ? a + "/" + b : b; }

  function humanSize(n) {
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  /* Every file under a dropped entry, as {file, path} with path relative to the drop. */
  function walkEntry(entry, prefix) {
    return new Promise(function (resolve) {
      if (entry.isFile) {
        entry.file(function (f) { resolve([{file: f, path: prefix + f.name}]); }, function () { resolve([]); });
        return;
      }
      var reader = entry.createReader(), all = [];
      (function more() {
        reader.readEntries(function (entries) {
          if (!entries.length) {
            Promise.all(all).then(function (lists) { resolve([].concat.apply([], lists)); });
            return;
          }
          entries.forEach(function (e) { all.push(walkEntry(e, prefix + entry.name + "/")); });
          more();
        }, function () { resolve([]); });
      })();
    });
  }

  function droppedFiles(dt) {
    var entries = [];
    if (dt.items) {
      for (var i = 0; i < dt.items.length; i++) {
        var e = dt.items[i].webkitGetAsEntry ? dt.items[i].webkitGetAsEntry() : null;
        if (e) { entries.push(e); }
      }
    }
    if (!entries.length) {
      return Promise.resolve(Array.prototype.map.call(dt.files, function (f) { return {file: f, path: f.name}; }));
    }
    return Promise.all(entries.map(function (e) { return walkEntry(e, ""); }))
      .then(function (lists) { return [].concat.apply([], lists); });
  }

  function request(method, url, body, onProgress) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      if (onProgress) { xhr.upload.onprogress = function (ev) { onProgress(ev.loaded); }; }
      xhr.onload = function () {
        var message = "";
        if (xhr.status >= 400) {
          try { message = JSON.parse(xhr.responseText).error; } catch (err) { message = "HTTP " + xhr.status; }
        }
        resolve({ok: xhr.status < 400, message: message});
      };
      xhr.onerror = function () { resolve({ok: false, message: "the connection failed"}); };
      if (body && !(body instanceof File)) { xhr.setRequestHeader("Content-Type", "application/json"); }
      xhr.send(body || null);
    });
  }

  function Uploader(zone) {
    this.folder = zone.getAttribute("data-folder");
    this.status = document.getElementById("upload-status");
    this.total = document.getElementById("upload-total");
    this.summary = document.getElementById("upload-summary");
    this.list = document.getElementById("upload-list");
  }

  Uploader.prototype.start = function (files) {
    var self = this;
    if (!files.length) { return; }
    self.status.hidden = false;
    self.list.textContent = "";
    var bytes = files.reduce(function (s, f) { return s + f.file.size; }, 0) || 1;
    var sent = files.map(function () { return 0; });
    var done = 0, failed = 0;
    self.total.max = bytes;
    self.total.value = 0;
    var rows = files.map(function (f) {
      var li = document.createElement("li");
      var name = document.createElement("span");
      name.textContent = f.path + " (" + humanSize(f.file.size) + ")";
      var bar = document.createElement("progress");
      bar.max = f.file.size || 1;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + f.path);
      var state = document.createElement("span");
      state.className = "state";
      state.textContent = "waiting";
      li.append(name, bar, state);
      self.list.appendChild(li);
      return {li: li, bar: bar, state: state};
    });
    function update() {
      self.total.value = sent.reduce(function (a, b) { return a + b; }, 0);
      self.summary.textContent = done + " of " + files.length + " files uploaded" + (failed ? ", " + failed + " failed" : "");
    }
    update();
    var folders = {};
    files.forEach(function (f) {
      var parts = f.path.split("/");
      for (var i = 1; i < parts.length; i++) { folders[parts.slice(0, i).join("/")] = true; }
    });
    var made = Object.keys(folders).sort().reduce(function (p, sub) {
      return p.then(function () {
        return request("POST", "/api/v1/folders/" + encodePath(join(self.folder, sub)),
          JSON.stringify({parents: true, exist_ok: true}));
      });
    }, Promise.resolve());
    var next = 0;
    function worker() {
      if (next >= files.length) { return Promise.resolve(); }
      var i = next++, f = files[i], row = rows[i];
      row.state.textContent = "uploading";
      var url = "/api/v1/content/" + encodePath(join(self.folder, f.path));
      return request("PUT", url, f.file, function (loaded) {
        row.bar.value = loaded; sent[i] = loaded; update();
      }).then(function (res) {
        if (res.ok) {
          done++; sent[i] = f.file.size; row.bar.value = row.bar.max; row.state.textContent = "done";
        } else {
          failed++; row.li.className = "failed"; row.state.textContent = res.message;
        }
        update();
        return worker();
      });
    }
    made.then(function () {
      var workers = [];
      for (var k = 0; k < PARALLEL; k++) { workers.push(worker()); }
      return Promise.all(workers);
    }).then(function () {
      self.summary.textContent += ". Done.";
      self.status.setAttribute("data-finished", "true");
      return refreshItems();
    });
  };

  /* Reload the items table (and its count) in place, keeping the progress bars on screen. */
  function refreshItems() {
    return fetch(window.location.href, {credentials: "same-origin"}).then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["items", "items-heading"].forEach(function (id) {
          var fresh = doc.getElementById(id), old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(fresh); }
        });
      });
  }

  function setUpDropzone(zone) {
    var uploader = new Uploader(zone);
    zone.addEventListener("dragover", function (ev) { ev.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (ev) {
      ev.preventDefault();
      zone.classList.remove("over");
      droppedFiles(ev.dataTransfer).then(function (files) { uploader.start(files); });
    });
    ["pick-files", "pick-dir"].forEach(function (id) {
      var input = document.getElementById(id);
      if (!input) { return; }
      input.addEventListener("change", function () {
        var files = Array.prototype.map.call(input.files, function (f) {
          return {file: f, path: f.webkitRelativePath || f.name};
        });
        uploader.start(files);
        input.value = "";
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var zone = document.getElementById("dropzone");
    if (zone) { setUpDropzone(zone); }
  });
})();
