// The "starting your workspace" page: poll the router until the workspace answers, show
// each step as it happens, then continue to the workspace by itself.
(function () {
  "use strict";
  var statusEl = document.getElementById("status");
  var stepsEl = document.getElementById("steps");
  var card = document.getElementById("progress");
  var shown = 0;

  function show(messages) {
    for (; shown < messages.length; shown++) {
      var li = document.createElement("li");
      li.textContent = messages[shown];
      stepsEl.appendChild(li);
    }
  }

  function poll() {
    // A long poll: the router answers as soon as there is news (or after 10 s).
    fetch("/dispatch/status?seen=" + shown, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/login?next=/dispatch"; return null; }
        return r.json();
      })
      .then(function (s) {
        if (!s) return;
        show(s.messages || []);
        if (s.state === "ready") {
          statusEl.textContent = "Ready. Opening your workspace…";
          location.replace(s.url);
        } else if (s.state === "error") {
          card.classList.add("failed");
          statusEl.textContent = s.error;
          if (s.retry_after_s) {
            statusEl.textContent += " Trying again in " + s.retry_after_s + " s.";
            setTimeout(function () { location.reload(); }, s.retry_after_s * 1000);
          }
        } else {
          statusEl.textContent = s.messages && s.messages.length
            ? s.messages[s.messages.length - 1] + "…" : "Starting…";
          setTimeout(poll, 100);
        }
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
