// codepool heartbeat: tells the router this workspace is being looked at.
// Injected into the workspace's HTML by the router's proxy. Pings POST /ping every
// data-interval seconds while the tab is visible, and at once when it becomes visible.
// On 401 it sends the user to log in; on 409 (workspace stopped) it offers to resume.
(function () {
  "use strict";
  if (window.top !== window) return; // one heartbeat per tab, not one per iframe
  var me = document.currentScript;
  var instanceId = me.getAttribute("data-instance-id");
  var intervalMs = Math.max(1, Number(me.getAttribute("data-interval") || 30)) * 1000;
  var stopped = false;

  function banner() {
    if (document.getElementById("codepool-stopped")) return;
    var bar = document.createElement("div");
    bar.id = "codepool-stopped";
    bar.setAttribute("role", "alert");
    bar.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:2147483647;" +
      "padding:10px 16px;background:#b26a00;color:#fff;font:14px system-ui,sans-serif;";
    bar.textContent = "This workspace was stopped after being idle. Your files are kept. ";
    var link = document.createElement("a");
    link.href = "/dispatch";
    link.textContent = "Resume it";
    link.style.cssText = "color:#fff;font-weight:bold;";
    bar.appendChild(link);
    document.body.appendChild(bar);
  }

  function ping() {
    if (stopped || document.visibilityState !== "visible") return;
    fetch("/ping", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instanceId: instanceId }),
      keepalive: true
    }).then(function (r) {
      if (r.status === 401) {
        location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      } else if (r.status === 409) {
        stopped = true;
        banner();
      }
    }).catch(function () { /* router unreachable: try again next time */ });
  }

  setInterval(ping, intervalMs);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") ping();
  });
  ping();
})();
