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
  const assignment = root.dataset.assignment;
  const storeKey = "ranklab.reply." + assignment;
  const show = (e) => { e.hidden = false; };
  const hide = (e) => { e.hidden = true; };
  let submitting = false;

  const kit = window.ranklabLabel;
  const spent = kit.timers(root);

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
  const { toggleGuidelines, toggleHelp } = kit.panels(root);
  const expand = kit.folding();
  function openSkip() {
    show(skipForm);
    document.getElementById("skip-reason").focus();
  }
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
    save();
  }
  const save = kit.saver(form, forget);  // as the ranking page: retried on a 503, kept meanwhile
  form.addEventListener("submit", (e) => { e.preventDefault(); trySubmit(); });
  skipForm.addEventListener("submit", () => {
    skipForm.querySelector(".time-spent").value = spent();
    forget();
  });
  document.getElementById("draft-btn").addEventListener("click", startFromDraft);
  document.getElementById("skip-btn").addEventListener("click", openSkip);
  document.getElementById("skip-cancel").addEventListener("click", () => { hide(skipForm); reply.focus(); });
  reply.focus({ preventScroll: true });
})();
