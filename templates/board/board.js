// The board's only script, and an optional one: every action is a plain form. It listens to
// the server's events (/board/events) and, when a ticket changes, reloads the parts of the page
// that show tickets, keeping keyboard focus where it was and saying so to screen readers.
(function () {
  "use strict";
  var live = document.body.getAttribute("data-live");
  if (!live || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var parts = ["queue", "live-parts", "history"];
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Board-Refresh": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var active = document.activeElement;
        var keep = active && active.getAttribute ? active.getAttribute("href") : null;
        parts.forEach(function (id) {
          var now = document.getElementById(id), next = doc.getElementById(id);
          if (now && next && now.innerHTML !== next.innerHTML) now.innerHTML = next.innerHTML;
        });
        if (keep && (!document.activeElement || document.activeElement === document.body)) {
          var again2 = document.querySelector('a[href="' + keep.replace(/"/g, "") + '"]');
          if (again2) again2.focus();
        }
        var say = document.getElementById("live-status");
        if (say) say.textContent = "Updated " + new Date().toLocaleTimeString();
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var es = new EventSource(live);
  es.addEventListener("change", refresh);
})();
