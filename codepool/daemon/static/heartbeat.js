// codepool heartbeat: put into every page of the workspace by the router's proxy, with
// the addresses it talks to in data-* attributes of its script tag.
//
// - While the tab is in view it pings every data-interval seconds (and at once when it
//   comes into view): that is what keeps the workspace from the idle reaper.
// - While the tab is hidden it does not ping, but reads how long the workspace has left
//   (data-status; a read is not activity). The router holds each read until the idle
//   warning is due, so the warning comes on time even where the browser runs a hidden
//   tab's timers once a minute. Within the warning window it shows a notification (if
//   the person allowed them) whose click keeps the workspace running for a while, a bar
//   saying the same, and a cue in the tab's title.
// - A small button in the corner opens a panel: the workspace's state, keep it running
//   for a chosen time, let it stop when idle, turn warnings on, the home page.
// - On 401 it logs in again; on 409 (the workspace stopped) a bar offers to resume it.
// The bar and the panel live in a shadow root, so the page's styles and ours stay apart.
(function () {
  "use strict";
  if (window.top !== window) return; // one heartbeat per tab, not one per iframe
  var me = document.currentScript;
  function data(name, fallback) {
    var v = me.getAttribute("data-" + name);
    return v === null ? fallback : v;
  }
  var instanceId = data("instance-id", "");
  var intervalMs = Math.max(1, Number(data("interval", "30"))) * 1000;
  var maxAge = Math.max(0, Number(data("max-age", "0")));  // pool.max_age_s; 0: no limit
  var urls = {
    ping: data("ping", "/ping"), status: data("status", "/api/me"), hold: data("hold", "/hold"),
    resume: data("resume", "/dispatch"), login: data("login", ""), home: data("home", "/")
  };
  var stopped = false, watching = false, warning = null, last = null, warnedFor = "";
  var CUE = "\u23F8 Stops soon \u00B7 ";
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  var ink = dark ? "#f0f3f6" : "#1a1c1f", paper = dark ? "#1f2328" : "#ffffff";
  var accent = dark ? "#8ab4ff" : "#1f5fcf", onAccent = dark ? "#0b1a33" : "#ffffff";

  // A duration as a person says it ("about 2 minutes", "1 hour"), as the home page does.
  function duration(s) {
    s = Math.max(0, Math.round(s));
    function unit(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
    if (s < 60) return unit(s, "second");
    if (s < 3600) return unit(Math.round(s / 60), "minute");
    var h = Math.floor(s / 3600), m = Math.round(s % 3600 / 60);
    if (m === 60) { h += 1; m = 0; }
    return unit(h, "hour") + (m ? " " + unit(m, "minute") : "");
  }

  function el(tag, css, text) {
    var e = document.createElement(tag);
    if (css) e.style.cssText = css;
    if (text) e.textContent = text;
    return e;
  }

  var BUTTON = "font:inherit;padding:4px 10px;margin:2px 6px 2px 0;border-radius:5px;" +
    "border:1px solid " + accent + ";cursor:pointer;";
  function button(label, primary, onclick) {
    var b = el("button", BUTTON + (primary ? "background:" + accent + ";color:" + onAccent :
      "background:transparent;color:inherit"), label);
    b.type = "button";
    b.addEventListener("click", onclick);
    return b;
  }

  // -- the shadow root: the corner button, its panel, and the bar across the top ---------
  var root = null, bar = null, panel = null, chip = null;
  function ui() {
    if (root) return root;
    var host = el("div", "all:initial");
    host.id = "codepool";
    (document.body || document.documentElement).appendChild(host);
    root = host.attachShadow({ mode: "open" });
    var font = "font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;";
    // The button sits in the middle of the status bar, where VS Code puts nothing.
    chip = el("button", font + "position:fixed;left:50%;bottom:2px;z-index:2147483646;" +
      "transform:translateX(-50%);height:18px;line-height:16px;padding:0 9px;" +
      "font-size:12px;border-radius:9px;border:1px solid " + accent + ";" +
      "background:" + paper + ";color:" + accent + ";cursor:pointer;", "\u25F7 codepool");
    chip.id = "codepool-chip";
    chip.type = "button";
    chip.title = "codepool: keep this workspace running";
    chip.setAttribute("aria-label", "codepool: keep this workspace running");
    chip.setAttribute("aria-expanded", "false");
    chip.addEventListener("click", function () { openPanel(panel.hidden); });
    panel = el("div", font + "position:fixed;left:50%;bottom:28px;z-index:2147483646;" +
      "transform:translateX(-50%);width:320px;max-width:calc(100vw - 24px);" +
      "padding:12px 14px;border-radius:8px;" +
      "background:" + paper + ";color:" + ink + ";border:1px solid " + accent + ";" +
      "box-shadow:0 4px 18px rgba(0,0,0,.3);");
    panel.id = "codepool-panel";
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", "codepool");
    panel.hidden = true;
    panel.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { openPanel(false); chip.focus(); }
    });
    root.appendChild(chip);
    root.appendChild(panel);
    return root;
  }

  function openPanel(open) {
    ui();
    panel.hidden = !open;
    chip.setAttribute("aria-expanded", String(open));
    if (open) { fillPanel(); read(false); }
  }

  function fillPanel() {
    if (!panel || panel.hidden) return;
    panel.textContent = "";
    var s = last;
    var line;
    if (!s) line = "Reading the workspace\u2019s state\u2026";
    else if (s.state !== "running") line = "The workspace is " + s.state + ".";
    else if (s.held_s > 0) line = "Kept running for another " + duration(s.held_s) + ", open or not.";
    else line = "Stops when no tab of it has been in view for a while (in " +
      duration(s.left_s) + " if none is).";
    var p = el("p", "margin:0 0 8px", line);
    p.setAttribute("role", "status");
    panel.appendChild(p);
    if (s && s.state === "running" && s.hold_choices_s.length) {
      var row = el("div", "margin:0 0 6px");
      var label = el("label", "margin-right:6px", "Keep running for");
      var select = el("select", "font:inherit;padding:3px;border-radius:4px;" +
        "background:" + paper + ";color:" + ink + ";border:1px solid " + accent);
      select.id = "codepool-hold-for";
      label.htmlFor = select.id;
      s.hold_choices_s.forEach(function (c) {
        var o = el("option", "", duration(c));
        o.value = String(c);
        if (c === s.notify_hold_s) o.selected = true;
        select.appendChild(o);
      });
      row.appendChild(label);
      row.appendChild(select);
      panel.appendChild(row);
      panel.appendChild(button("Keep running", true, function () {
        hold(Number(select.value));
      }));
      if (s.held_s > 0) panel.appendChild(button("Let it stop when idle", false, function () {
        hold(0);
      }));
    }
    if (window.Notification && Notification.permission === "default") {
      panel.appendChild(button("Warn me before it stops", false, function () {
        Notification.requestPermission().then(fillPanel);
      }));
    }
    var home = el("a", "display:block;margin-top:8px;color:" + accent, "Home page");
    home.href = urls.home;
    home.target = "_blank";
    home.rel = "noopener";
    panel.appendChild(home);
  }

  // The bar is changed in place when it says something new: a button made again under
  // the pointer would lose the click pressed on the one before.
  var barText = null, barActions = null, barKey = "";
  function showBar(id, text, actions) {
    ui();
    var key = actions.map(function (a) { return a.textContent; }).join("\n");
    if (!bar || bar.id !== id) {
      if (bar) bar.remove();
      bar = el("div", "position:fixed;top:0;left:0;right:0;z-index:2147483647;" +
        "padding:10px 16px;background:#7a4100;color:#fff;" +
        "font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;");
      bar.id = id;
      bar.setAttribute("role", "alert");
      barText = el("span", "", "");
      barActions = el("span", "margin-left:4px", "");
      bar.appendChild(barText);
      bar.appendChild(barActions);
      root.appendChild(bar);
      barKey = null;
    }
    if (barText.textContent !== text) barText.textContent = text;
    if (barKey !== key) {
      barActions.textContent = "";
      actions.forEach(function (a) { barActions.appendChild(a); });
      barKey = key;
    }
  }

  function hideBar(id) {
    if (bar && bar.id === id) { bar.remove(); bar = null; }
  }

  // -- warnings ---------------------------------------------------------------------------
  function warn(s) {
    var soon = "This workspace stops in about " + duration(s.left_s) +
      ": no tab of it has been in view.";
    var keep = s.notify_hold_s > 0 ? "Keep running for " + duration(s.notify_hold_s) : "";
    var barActions = [];
    if (keep) barActions.push(button(keep, false, function () { hold(s.notify_hold_s); }));
    showBar("codepool-warning", soon, barActions);
    warnedFor = "idle";
    if (document.title.indexOf(CUE) !== 0) document.title = CUE + document.title;
    if (warning || !window.Notification || Notification.permission !== "granted") return;
    try {
      warning = new Notification("Your workspace stops in about " + duration(s.left_s), {
        body: "No tab of it has been in view. " +
          (keep ? "Click to keep it running for " + duration(s.notify_hold_s) + "." :
            "Click to go back to it."),
        tag: "codepool-idle",
        requireInteraction: true
      });
      warning.onclick = function () {
        if (keep) hold(s.notify_hold_s);
        window.focus();
        warning.close();
      };
    } catch (e) { /* a browser that only notifies from a service worker: the bar stays */ }
  }

  // A workspace at its maximum age stops whatever anyone does: say so, in view or not.
  function warnAge(s) {
    var soon = "This workspace stops in about " + duration(s.left_s) + ": a workspace runs " +
      "at most " + duration(maxAge) + " at a time. Save your work, then open it again to carry on.";
    showBar("codepool-warning", soon, []);
    warnedFor = "age";
    if (document.title.indexOf(CUE) !== 0) document.title = CUE + document.title;
    if (warning || !window.Notification || Notification.permission !== "granted") return;
    try {
      warning = new Notification("Your workspace stops in about " + duration(s.left_s), {
        body: "It has run for the longest a workspace may. Save your work.",
        tag: "codepool-idle",
        requireInteraction: true
      });
      warning.onclick = function () { window.focus(); warning.close(); };
    } catch (e) { /* as in warn() */ }
  }

  function unwarn() {
    warnedFor = "";
    hideBar("codepool-warning");
    if (document.title.indexOf(CUE) === 0) document.title = document.title.slice(CUE.length);
    if (warning) { warning.close(); warning = null; }
  }

  function stoppedNow() {
    var wasWarned = warning !== null;
    unwarn();
    if (stopped) return;
    stopped = true;
    var link = el("a", "color:#fff;font-weight:bold", "Resume it");
    link.href = urls.resume;
    showBar("codepool-stopped",
      "This workspace was stopped after being idle. Your files are kept.", [link]);
    if (wasWarned && document.visibilityState !== "visible" && window.Notification &&
        Notification.permission === "granted") {
      try {
        new Notification("Your workspace was stopped", {
          body: "It was idle. Your files are kept: open it to carry on.", tag: "codepool-idle"
        }).onclick = function () { window.focus(); };
      } catch (e) { /* as above */ }
    }
  }

  function seen(s) {
    last = s;
    if (s.state === "stopped" || s.state === "none") stoppedNow();
    else if (s.state === "running" && s.ends === "max-age" && s.warn_s > 0 &&
             s.left_s <= s.warn_s) warnAge(s);
    else if (s.state === "running" && s.held_s === 0 && s.warn_s > 0 && s.left_s <= s.warn_s &&
             document.visibilityState !== "visible") warn(s);
    else unwarn();
    fillPanel();
  }

  // -- talking to the router ----------------------------------------------------------------
  function loggedOut() {
    if (urls.login) {
      location.href = urls.login + "?next=" + encodeURIComponent(location.pathname + location.search);
    } else {
      location.reload();
    }
  }

  // Answers about the workspace are applied in the order the router made them: a read
  // it answered before a hold was written, arriving after the hold's answer, must not
  // bring back the warning the hold took away (the next read may be held for a while).
  // A read is known to be newer than a hold only when asked after the hold's answer
  // came: one asked while the hold was under way may have been answered before it. So
  // no read's answer is applied while a hold is under way, and a hold's answer sets
  // aside every read asked until it came. Of two holds, the one asked last stands.
  var asked = 0, applied = 0, holding = 0, heldAsked = 0;
  function readAnswered(n, s) {
    if (!holding && n > applied) { applied = n; seen(s); }
  }
  function holdAnswered(n, s) {
    if (n > heldAsked) { heldAsked = n; applied = asked; seen(s); }
  }

  function read(wait) {
    var n = ++asked;
    return fetch(urls.status + (wait ? "?wait=50" : ""), {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" }
    }).then(function (r) {
      if (r.status === 401) { loggedOut(); return null; }
      if (r.status !== 200) throw new Error(String(r.status));
      return r.json();
    }).then(function (s) { if (s) readAnswered(n, s); return s; });
  }

  // While hidden: one read after another, each held by the router until there is news.
  // The next read starts from the answer's callback, not from a timer, so a browser's
  // throttling of hidden tabs' timers does not delay it; only an answer that came sooner
  // than READ_GAP_MS (a router that does not hold reads) waits out the rest.
  var READ_GAP_MS = 2000;
  function watch() {
    if (watching || stopped) return;
    watching = true;
    (function next() {
      if (document.visibilityState === "visible" || stopped) { watching = false; return; }
      var began = Date.now();
      read(true).then(function (s) {
        if (!s) { watching = false; return; }
        var rest = READ_GAP_MS - (Date.now() - began);
        if (rest > 0) setTimeout(next, rest); else next();
      }, function () { setTimeout(next, 10000); });
    })();
  }

  function hold(seconds) {
    var n = ++asked, answered = false;
    holding += 1;
    return fetch(urls.hold, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ for_s: seconds })
    }).then(function (r) {
      answered = true;  // the router has done what it will with the hold
      holding -= 1;
      if (r.status === 401) { loggedOut(); return null; }
      return r.json().then(function (s) {
        if (r.status === 200) holdAnswered(n, s);
        else if (r.status === 409) stoppedNow();
        return s;
      });
    }).catch(function () {
      if (!answered) holding -= 1;  // router unreachable: the bar and the panel stay
    });
  }

  function ping() {
    if (stopped || document.visibilityState !== "visible") return;
    fetch(urls.ping, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instanceId: instanceId }),
      keepalive: true
    }).then(function (r) {
      if (r.status === 401) loggedOut();
      else if (r.status === 409) stoppedNow();
      else if (r.ok && warnedFor === "idle") unwarn();
    }).catch(function () { /* router unreachable: try again next time */ });
  }

  function start() {
    ui();
    setInterval(ping, intervalMs);
    // A tab in view does not read how long is left (its pings keep the workspace), but a
    // maximum age ends it all the same: then it reads once a minute, to warn in time.
    if (maxAge > 0) {
      setInterval(function () {
        if (document.visibilityState === "visible" && !stopped) read(false).catch(function () {});
      }, 60000);
    }
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") ping(); else watch();
    });
    ping();
    watch();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
