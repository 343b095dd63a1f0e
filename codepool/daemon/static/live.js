// Pages that keep themselves current (the home page, the pool page): every element with
// data-live="N" is fetched again from this page's address every N seconds while the tab is
// in view, and at once when it comes back into view, then swapped for the fresh one
// unless the person is using a control inside it.
(function () {
  "use strict";
  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length || !window.fetch || !window.DOMParser) return;
  var seconds = Number(parts[0].getAttribute("data-live")) || 10;
  var busy = false;

  function refresh() {
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    fetch(location.pathname, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected || r.status !== 200) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        Array.prototype.forEach.call(document.querySelectorAll("[data-live]"), function (old) {
          var next = old.id && fresh.getElementById(old.id);
          if (next && !old.contains(document.activeElement)) old.replaceWith(next);
        });
      })
      .catch(function () { /* the router is away: try again next time */ })
      .then(function () { busy = false; });
  }

  setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
