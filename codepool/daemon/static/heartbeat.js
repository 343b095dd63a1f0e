// codepool heartbeat: tells the router this workspace is being looked at.
// Injected into the workspace's HTML by the router's proxy, with where to ping
// (data-ping), where to resume (data-resume) and where to log in (data-login; empty on a
// workspace origin, where reloading logs in again by itself). Pings every data-interval
// seconds while the tab is visible, and at once when it becomes visible. On 401 it sends
// the person to log in; on 409 (workspace stopped) it offers to resume.
(function () {
  "use strict";
  if (window.top !== window) return; // one heartbeat per tab, not one per iframe
  var me = document.currentScript;
  var instanceId = me.getAttribute("data-instance-id");
  var intervalMs = Math.max(1, Number(me.getAttribute("data-interval") || 30)) * 1000;
  var pingUrl = me.getAttribute("data-ping") || "/ping";
  var resumeUrl = me.getAttribute("data-resume") || "/dispatch";
  var loginUrl = me.getAttribute("data-login");
  var stopped = false;

  function banner() {
    if (document.getElementById("codepool-stopped")) return;
    var bar = document.createElement("div");
    bar.id = "codepool-stopped";
    bar.setAttribute("role", "alert");
    bar.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:2147483647;" +
      "padding:10px 16px;background:#8a4f00;color:#fff;font:14px system-ui,sans-serif;";
    bar.textContent = "This workspace was stopped after being idle. Your files are kept. ";
    var link = document.createElement("a");
    link.href = resumeUrl;
    link.textContent = "Resume it";
    link.style.cssText = "color:#fff;font-weight:bold;";
    bar.appendChild(link);
    document.body.appendChild(bar);
  }

  function ping() {
    if (stopped || document.visibilityState !== "visible") return;
    fetch(pingUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instanceId: instanceId }),
      keepalive: true
    }).then(function (r) {
      if (r.status === 401) {
        if (loginUrl) {
          location.href = loginUrl + "?next=" +
            encodeURIComponent(location.pathname + location.search);
        } else {
          location.reload();
        }
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
