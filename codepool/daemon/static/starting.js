// The "starting your workspace" page: poll the router until the workspace answers, show
// what is happening in one line with how long it usually takes, then go on by itself.
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var estimateEl = document.getElementById("estimate");
  var card = document.getElementById("progress");
  var seen = 0;

  function about(seconds) {
    if (seconds < 10) return "a few seconds";
    if (seconds < 90) return "about " + Math.round(seconds / 5) * 5 + " seconds";
    return "about " + Math.round(seconds / 60) + " minutes";
  }

  function estimate(s) {
    if (s.estimate_s === null || s.estimate_s === undefined) return "";
    var left = s.estimate_s - s.elapsed_s;
    if (left < -5) return "This is taking longer than usual.";
    if (left < 5) return "Nearly there.";
    return "Usually " + about(s.estimate_s) + "; " + about(left) + " to go.";
  }

  function poll() {
    // A long poll: the router answers as soon as there is news (or after 10 s).
    fetch("/dispatch/status?seen=" + seen, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/login?next=/dispatch"; return null; }
        return r.json();
      })
      .then(function (s) {
        if (!s) return;
        seen = (s.messages || []).length;
        if (s.state === "ready") {
          statusEl.textContent = "Ready. Opening VS Code\u2026";
          estimateEl.textContent = "";
          location.replace(s.url);
        } else if (s.state === "error") {
          card.classList.add("failed");
          statusEl.textContent = s.error;
          estimateEl.textContent = "";
          if (s.retry_after_s) {
            estimateEl.textContent = "Trying again in " + s.retry_after_s + " s.";
            setTimeout(function () { location.reload(); }, s.retry_after_s * 1000);
          }
        } else {
          var line = seen ? s.messages[seen - 1] : "Finding your workspace";
          if (statusEl.textContent !== line + "\u2026") statusEl.textContent = line + "\u2026";
          estimateEl.textContent = estimate(s);
          setTimeout(poll, 100);
        }
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
