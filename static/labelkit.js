// What both labeling pages (ranking: label.js, demonstration: demonstration.js) share: the task
// and session timers, the guidelines and key-help panels, folding long turns, and a save that
// survives a busy server.
window.ranklabLabel = (function () {
  "use strict";

  // The timers in the top bar; returns spent(): this task's milliseconds, as a string.
  function timers(root) {
    const taskStart = Date.now() - (parseInt(root.dataset.elapsedMs, 10) || 0);
    let sessionStart = parseInt(sessionStorage.getItem("ranklab.sessionStart") || "", 10);
    if (!sessionStart) {
      sessionStart = taskStart;
      sessionStorage.setItem("ranklab.sessionStart", String(sessionStart));
    }
    const fmt = (ms) => {
      const s = Math.max(0, Math.floor(ms / 1000));
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
      return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
    };
    const tick = () => {
      document.getElementById("task-timer").textContent = fmt(Date.now() - taskStart);
      document.getElementById("session-timer").textContent = fmt(Date.now() - sessionStart);
    };
    tick();
    setInterval(tick, 1000);
    return () => String(Math.max(0, Date.now() - taskStart));
  }

  // The guidelines (g) and key help (?) panels, their buttons, and the guidelines kept open
  // across tasks; returns {toggleGuidelines, toggleHelp}.
  function panels(root) {
    const guidelines = document.getElementById("guidelines");
    const keymap = document.getElementById("keymap");
    function toggleGuidelines() {
      guidelines.hidden = !guidelines.hidden;
      root.classList.toggle("with-guidelines", !guidelines.hidden);
      document.getElementById("toggle-guidelines").setAttribute("aria-expanded", String(!guidelines.hidden));
      localStorage.setItem("ranklab.guidelines", guidelines.hidden ? "0" : "1");
    }
    function toggleHelp() {
      keymap.classList.toggle("hidden-help");
      if (!keymap.classList.contains("hidden-help")) keymap.scrollIntoView({ block: "nearest" });
    }
    document.getElementById("toggle-guidelines").addEventListener("click", toggleGuidelines);
    document.getElementById("toggle-help").addEventListener("click", toggleHelp);
    if (localStorage.getItem("ranklab.guidelines") === "1") toggleGuidelines();
    return { toggleGuidelines, toggleHelp };
  }

  // "Show all" (e): every long turn folds and unfolds together. Returns the button, or null.
  function folding() {
    const expand = document.getElementById("expand-prompt");
    if (expand) {
      expand.addEventListener("click", () => {
        const open = expand.getAttribute("aria-expanded") !== "true";
        for (const f of document.querySelectorAll("[data-fold]")) f.classList.toggle("collapsed", !open);
        expand.textContent = open ? "Show less" : "Show all";
        expand.setAttribute("aria-expanded", String(open));
      });
    }
    return expand;
  }

  // Posted with fetch so that a busy server (503 + Retry-After: its database is exhausted or
  // reconnecting) or a dropped connection is retried quietly, with backoff, while the page keeps
  // everything the labeler entered. Submitting is idempotent, so a retry never stores twice.
  // Any other answer (a 422 naming a field, a 409) is shown as the server's own page, by posting
  // the form natively: nothing was stored, so the same post gets the same answer.
  function saver(form, onStored) {
    const saving = document.getElementById("saving");
    function save(attempt) {
      const body = new URLSearchParams(new FormData(form));
      fetch(form.action, { method: "POST", body, redirect: "manual", credentials: "same-origin" })
        .then((resp) => {
          if (resp.type === "opaqueredirect" || (resp.status >= 300 && resp.status < 400)) {
            if (onStored) onStored();
            window.location.assign("/label");  // stored: the next task
          } else if (resp.status === 503) {
            retry(attempt, Number(resp.headers.get("Retry-After")) || 1);
          } else {
            form.submit();
          }
        })
        .catch(() => retry(attempt, 1));
    }
    function retry(attempt, retryAfter) {
      const wait = Math.min(8000, Math.max(retryAfter * 1000, 500 * 2 ** attempt));
      saving.textContent = "Saving… the server is busy; trying again (your answers are kept).";
      saving.hidden = false;
      document.getElementById("submit-btn").textContent = "Saving…";
      setTimeout(() => save(attempt + 1), wait);
    }
    return () => save(0);
  }

  return { timers, panels, folding, saver };
})();
