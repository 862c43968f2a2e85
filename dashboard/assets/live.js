// NovaCron dashboard: live updates and the theme switch. The pages work without it; with it,
// a page listens to the node's event stream and, when an event it cares about arrives,
// fetches itself again and swaps its [data-live] regions in place (no reload). A dropped
// stream shows the banner and reconnects.
(function () {
  "use strict";
  var root = document.documentElement;
  var saved = null;
  try { saved = localStorage.getItem("novacron-theme"); } catch (e) {}
  if (saved === "light" || saved === "dark") root.dataset.theme = saved;

  function dark() {
    if (root.dataset.theme) return root.dataset.theme === "dark";
    return window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches;
  }

  function ready() {
    var themeButton = document.getElementById("theme");
    if (themeButton) {
      themeButton.addEventListener("click", function () {
        var next = dark() ? "light" : "dark";
        root.dataset.theme = next;
        try { localStorage.setItem("novacron-theme", next); } catch (e) {}
      });
    }
    // A spec file read into the form's text area.
    document.querySelectorAll("input[type=file][data-into]").forEach(function (input) {
      input.addEventListener("change", function () {
        var file = input.files && input.files[0];
        var target = document.getElementById(input.dataset.into);
        if (!file || !target) return;
        if (file.size > 1048576) { alert("The spec file is over 1 MiB."); return; }
        file.text().then(function (text) { target.value = text; });
      });
    });
    if (document.body.dataset.livePage) live();
    follow();
  }

  var topics = (document.body.dataset.topics || "").split(" ").filter(Boolean);
  var timer = null, inFlight = false, again = false;

  function fragmentUrl() {
    var sep = location.search ? "&" : "?";
    return location.pathname + location.search + sep + "fragment=1";
  }

  function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    fetch(fragmentUrl(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var tpl = document.createElement("template");
        tpl.innerHTML = html;
        tpl.content.querySelectorAll("[data-live]").forEach(function (fresh) {
          var old = document.querySelector('[data-live="' + fresh.dataset.live + '"]');
          if (old && old.outerHTML !== fresh.outerHTML) old.replaceWith(fresh);
        });
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () {})
      .then(function () {
        inFlight = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, 40);
  }

  function live() {
    var banner = document.getElementById("connection");
    var source = null, lost = false;
    function down() {
      lost = true;
      document.body.dataset.connected = "0";
      if (banner) banner.hidden = false;
    }
    function connect() {
      source = new EventSource("/events");
      source.onopen = function () {
        document.body.dataset.connected = "1";
        if (banner) banner.hidden = true;
        // Whatever happened while the stream was down: catch up once.
        if (lost) { lost = false; schedule(); }
      };
      source.onerror = function () {
        down();
        if (source.readyState === EventSource.CLOSED) {
          source.close();
          setTimeout(connect, 1000);
        }
      };
      topics.concat(["resync"]).forEach(function (t) { source.addEventListener(t, schedule); });
    }
    connect();
  }

  // A job's log, followed while the job runs: appended from where the page left off.
  function follow() {
    var pre = document.querySelector("pre[data-follow]");
    if (!pre) return;
    var offset = Number(pre.dataset.offset || "0");
    function poll() {
      if (pre.dataset.done === "1") return;
      fetch(pre.dataset.follow + "?offset=" + offset, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (chunk) {
          if (chunk.text) {
            var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.appendChild(document.createTextNode(chunk.text));
            if (atBottom) pre.scrollTop = pre.scrollHeight;
          }
          offset = chunk.next_offset;
          if (chunk.done) pre.dataset.done = "1";
        })
        .catch(function () {})
        .then(function () { if (pre.dataset.done !== "1") setTimeout(poll, 1000); });
    }
    setTimeout(poll, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
