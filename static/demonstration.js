// The demonstration page: the reply editor, "Start from a draft", keys, timers, and a save that
// survives a busy server. Keys typed in the editor (or any field) are text: only Ctrl+Enter
// (Cmd+Enter) acts there. What is typed is kept in localStorage per assignment until it is stored.
(function () {
  "use strict";
  const root = document.getElementById("label-root");
  if (!root || root.dataset.kind !== "demonstration") return;
  const form = document.getElementById("demo-form");
  const skipForm = document.getElementById("skip-form");
  const reply = document.getElementById("reply");
  const notes = document.getElementById("notes");
  const draftId = document.getElementById("draft-id");
  const draftText = document.getElementById("draft-text");
  const draftStatus = document.getElementById("draft-status");
  const formError = document.getElementById("form-error");
  const saving = document.getElementById("saving");
  const guidelines = document.getElementById("guidelines");
  const keymap = document.getElementById("keymap");
  const assignment = root.dataset.assignment;
  const storeKey = "ranklab.reply." + assignment;
  const show = (e) => { e.hidden = false; };
  const hide = (e) => { e.hidden = true; };
  let submitting = false;

  // --- timers ----------------------------------------------------------------------------------
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
  const spent = () => String(Math.max(0, Date.now() - taskStart));

  // --- nothing typed is lost -------------------------------------------------------------------
  function keep() {
    try {
      localStorage.setItem(storeKey, JSON.stringify({ reply: reply.value, notes: notes.value, draft: draftId.value }));
    } catch (e) { /* storage full or off: the page still works */ }
  }
  function forget() { try { localStorage.removeItem(storeKey); } catch (e) { /* as above */ } }
  const kept = (() => { try { return JSON.parse(localStorage.getItem(storeKey) || "null"); } catch (e) { return null; } })();
  if (kept && !reply.value && kept.reply) {  // the server's own values (after a 422) come first
    reply.value = kept.reply;
    notes.value = notes.value || kept.notes || "";
    draftId.value = kept.draft || "";
  }
  reply.addEventListener("input", () => { hide(formError); keep(); });
  notes.addEventListener("input", keep);

  // --- drafts ----------------------------------------------------------------------------------
  let replaceArmed = false;
  function fill(id, text) {
    if (reply.value.trim() && reply.value !== text && !replaceArmed) {
      replaceArmed = true;
      draftStatus.textContent = "The editor has your text: press d (or the button) again to replace it with the draft.";
      return;
    }
    replaceArmed = false;
    reply.value = text;
    draftId.value = String(id);
    draftStatus.textContent = "Started from the draft: edit it into the ideal reply.";
    keep();
    reply.focus();
    reply.setSelectionRange(0, 0);
    reply.scrollTop = 0;
  }
  function startFromDraft() {
    if (draftText.dataset.id) { fill(draftText.dataset.id, draftText.value); return; }
    draftStatus.textContent = "Looking for a draft…";
    fetch("/label/" + assignment + "/draft", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((resp) => (resp.ok ? resp.json() : null))
      .then((d) => {
        if (!d) {
          draftStatus.textContent = "The draft is not ready yet: the policy is still writing drafts. Try again in a moment, or write from scratch.";
          return;
        }
        draftText.dataset.id = String(d.completion_id);
        draftText.value = d.text;
        fill(d.completion_id, d.text);
      })
      .catch(() => { draftStatus.textContent = "The draft could not be fetched; try again."; });
  }

  // --- panels ----------------------------------------------------------------------------------
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
  function openSkip() {
    show(skipForm);
    document.getElementById("skip-reason").focus();
  }
  const expand = document.getElementById("expand-prompt");

  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      if (!skipForm.hidden && skipForm.contains(e.target)) return;
      e.preventDefault();
      trySubmit();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    const typing = t instanceof Element && t.matches("textarea, select, input");
    if (e.key === "Escape") {
      if (!skipForm.hidden) { hide(skipForm); reply.focus(); return; }
      if (typing) t.blur();
      return;
    }
    if (typing) {
      if (e.key === "Enter" && t.id === "skip-reason" && t.value) { e.preventDefault(); skipForm.requestSubmit(); }
      return;  // text, never a shortcut
    }
    switch (e.key) {
      case "d": e.preventDefault(); startFromDraft(); break;
      case "s": e.preventDefault(); openSkip(); break;
      case "g": e.preventDefault(); toggleGuidelines(); break;
      case "?": e.preventDefault(); toggleHelp(); break;
      case "e": if (expand) { e.preventDefault(); expand.click(); } break;
      case "w": e.preventDefault(); reply.focus(); break;
      case "Enter":
        if (t instanceof Element && t.matches("button, a, summary")) return;
        e.preventDefault(); reply.focus(); break;
      default:
    }
  });

  // --- submit ----------------------------------------------------------------------------------
  function trySubmit() {
    if (submitting) return;
    if (!reply.value.trim()) {
      formError.textContent = "reply: the reply is empty: write the assistant's reply.";
      show(formError);
      reply.focus();
      return;
    }
    document.getElementById("time-spent").value = spent();
    submitting = true;
    document.getElementById("submit-btn").disabled = true;
    save(0);
  }
  // As the ranking page: posted with fetch so a busy server (503 + Retry-After) or a dropped
  // connection is retried with backoff while the page keeps the text; submitting is idempotent.
  // Any other answer (a 422 naming the field, a 409) is the server's own page, posted natively.
  function save(attempt) {
    const body = new URLSearchParams(new FormData(form));
    fetch(form.action, { method: "POST", body, redirect: "manual", credentials: "same-origin" })
      .then((resp) => {
        if (resp.type === "opaqueredirect" || (resp.status >= 300 && resp.status < 400)) {
          forget();
          window.location.assign("/label");
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
    saving.textContent = "Saving… the server is busy; trying again (your reply is kept).";
    show(saving);
    document.getElementById("submit-btn").textContent = "Saving…";
    setTimeout(() => save(attempt + 1), wait);
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); trySubmit(); });
  skipForm.addEventListener("submit", () => {
    skipForm.querySelector(".time-spent").value = spent();
    forget();
  });
  document.getElementById("draft-btn").addEventListener("click", startFromDraft);
  document.getElementById("skip-btn").addEventListener("click", openSkip);
  document.getElementById("skip-cancel").addEventListener("click", () => { hide(skipForm); reply.focus(); });
  document.getElementById("toggle-guidelines").addEventListener("click", toggleGuidelines);
  document.getElementById("toggle-help").addEventListener("click", toggleHelp);
  if (expand) {
    expand.addEventListener("click", () => {
      const open = expand.getAttribute("aria-expanded") !== "true";
      for (const f of document.querySelectorAll("[data-fold]")) f.classList.toggle("collapsed", !open);
      expand.textContent = open ? "Show less" : "Show all";
      expand.setAttribute("aria-expanded", String(open));
    });
  }
  if (localStorage.getItem("ranklab.guidelines") === "1") toggleGuidelines();
  reply.focus({ preventScroll: true });
})();
