// The labeling page: keyboard map, the drag-and-drop ranking board, timers, the consistency check.
// The form's rank number inputs are the truth; the board is drawn from them and writes back to them,
// so the mouse, the keys and the number fields can never disagree.
(function () {
  "use strict";
  const root = document.getElementById("label-root");
  if (!root) return;
  const form = document.getElementById("label-form");
  const skipForm = document.getElementById("skip-form");
  const board = document.getElementById("rank-board");
  const warning = document.getElementById("consistency");
  const formError = document.getElementById("form-error");
  const K = parseInt(root.dataset.k, 10);
  const cards = Array.from(document.querySelectorAll(".output"));
  const byCid = new Map(cards.map((c) => [c.dataset.cid, c]));
  const rankInput = (card) => card.querySelector(".rank-input");
  const label = (cid) => byCid.get(cid).dataset.label;
  let submitting = false;
  let sortables = [];

  const kit = window.ranklabLabel;
  const spent = kit.timers(root);

  // --- reading the form ------------------------------------------------------------------------
  function ranks() {
    const out = {};
    for (const c of cards) {
      const v = parseInt(rankInput(c).value, 10);
      out[c.dataset.cid] = Number.isFinite(v) && v >= 1 ? v : null;
    }
    return out;
  }
  function ratings() {
    const out = {};
    for (const c of cards) {
      const r = c.querySelector('input[type="radio"]:checked');
      out[c.dataset.cid] = r ? parseInt(r.value, 10) : null;
    }
    return out;
  }

  // --- the ranking board -----------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function chip(cid) {
    const c = el("span", "chip", label(cid));
    c.dataset.cid = cid;
    c.title = "Output " + label(cid) + ": drag to rank";
    return c;
  }
  function drawBoard() {
    sortables.forEach((s) => s.destroy());
    sortables = [];
    const r = ranks();
    const levels = Array.from(new Set(Object.values(r).filter((v) => v !== null))).sort((a, b) => a - b);
    board.textContent = "";
    const containers = [];
    const gap = () => {
      const g = el("div", "rank-gap");
      g.title = "Drop here for a rank of its own";
      board.appendChild(g);
      containers.push(g);
    };
    gap();
    levels.forEach((lvl, i) => {
      const row = el("div", "rank-row");
      row.appendChild(el("span", "rank-label", i === 0 ? "best" : "#" + (i + 1)));
      const group = el("div", "rank-group");
      group.dataset.rank = String(lvl);
      cards.filter((c) => r[c.dataset.cid] === lvl).forEach((c) => group.appendChild(chip(c.dataset.cid)));
      row.appendChild(group);
      board.appendChild(row);
      containers.push(group);
      gap();
    });
    const poolRow = el("div", "rank-row");
    poolRow.appendChild(el("span", "rank-label", "not ranked"));
    const pool = el("div", "rank-group rank-pool");
    cards.filter((c) => r[c.dataset.cid] === null).forEach((c) => pool.appendChild(chip(c.dataset.cid)));
    poolRow.appendChild(pool);
    board.appendChild(poolRow);
    containers.push(pool);
    for (const c of cards) {
      const mine = r[c.dataset.cid];
      const tied = cards.filter((o) => o !== c && mine !== null && r[o.dataset.cid] === mine)
        .map((o) => o.dataset.label);
      c.querySelector(".rank-show").textContent = mine === null ? "not ranked yet"
        : "rank " + (levels.indexOf(mine) + 1) + " of " + levels.length + (tied.length ? " · tied with " + tied.join(", ") : "");
    }
    if (window.Sortable) {
      for (const cont of containers) {
        sortables.push(window.Sortable.create(cont, {
          group: "rank", animation: 0, forceFallback: true, fallbackTolerance: 3,
          emptyInsertThreshold: 10,
          onStart: () => document.body.classList.add("dragging"),
          onEnd: () => {
            document.body.classList.remove("dragging");
            setTimeout(readBoard, 0); // let Sortable finish with its nodes before they are redrawn
          },
        }));
      }
    }
  }
  // Top to bottom, each non-empty row or gap is the next rank; the pool is "not ranked".
  function readBoard() {
    let n = 0;
    for (const cont of board.querySelectorAll(".rank-group, .rank-gap")) {
      const chips = cont.querySelectorAll(".chip");
      if (cont.classList.contains("rank-pool")) {
        chips.forEach((ch) => { rankInput(byCid.get(ch.dataset.cid)).value = ""; });
      } else if (chips.length) {
        n += 1;
        chips.forEach((ch) => { rankInput(byCid.get(ch.dataset.cid)).value = String(n); });
      }
    }
    changed();
  }
  function changed() {
    hide(warning);
    hide(formError);
    drawBoard();
  }

  // --- keyboard --------------------------------------------------------------------------------
  const current = () => {
    const a = document.activeElement;
    return a && a.closest ? a.closest(".output") : null;
  };
  function focusCard(i) {
    const c = cards[(i + cards.length) % cards.length];
    c.focus();
    c.scrollIntoView({ block: "nearest" });
  }
  function rate(card, value) {
    const radio = card.querySelector('input[type="radio"][value="' + value + '"]');
    if (radio) {
      radio.checked = true;
      hide(warning);
    }
  }
  function moveRank(card, delta) {
    const r = ranks();
    const mine = r[card.dataset.cid];
    let next;
    if (mine === null) {
      const used = Object.values(r).filter((v) => v !== null);
      next = delta < 0 ? 1 : Math.min(K, used.length ? Math.max(...used) + 1 : 1);
    } else {
      next = Math.min(K, Math.max(1, mine + delta));
    }
    rankInput(card).value = String(next);
    changed();
  }
  const show = (e) => { e.hidden = false; };
  const hide = (e) => { e.hidden = true; };
  const { toggleGuidelines, toggleHelp } = kit.panels(root);
  const expand = kit.folding();
  function openSkip() {
    show(skipForm);
    document.getElementById("skip-reason").focus();
  }
  function closePanels() {
    hide(skipForm);
    hide(warning); // "Fix it": the check runs again on the next submit
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    const typing = t instanceof Element && t.matches("textarea, select, input[type=text], input[type=number], input:not([type])");
    if (e.key === "Escape") {
      closePanels();
      if (typing) t.blur();
      focusCard(Math.max(0, cards.indexOf(current())));
      return;
    }
    if (typing) {
      if (e.key === "Enter" && t.matches(".rank-input")) { e.preventDefault(); trySubmit(false); }
      if (e.key === "Enter" && t.id === "skip-reason" && t.value) { e.preventDefault(); skipForm.requestSubmit(); }
      return;
    }
    const card = current();
    const onCard = card !== null && t === card;
    if (/^[1-7]$/.test(e.key) && card) { e.preventDefault(); rate(card, e.key); return; }
    switch (e.key) {
      case "j": e.preventDefault(); focusCard(card ? cards.indexOf(card) + 1 : 0); break;
      case "k": e.preventDefault(); focusCard(card ? cards.indexOf(card) - 1 : cards.length - 1); break;
      case "ArrowUp": if (onCard) { e.preventDefault(); moveRank(card, -1); } break;
      case "ArrowDown": if (onCard) { e.preventDefault(); moveRank(card, +1); } break;
      case "Enter":
        if (t instanceof Element && t.matches("button, a, summary")) return;
        e.preventDefault(); trySubmit(false); break;
      case "y": if (!warning.hidden) { e.preventDefault(); trySubmit(true); } break;
      case "s": e.preventDefault(); openSkip(); break;
      case "g": e.preventDefault(); toggleGuidelines(); break;
      case "?": e.preventDefault(); toggleHelp(); break;
      case "n": e.preventDefault(); document.getElementById("notes").focus(); break;
      case "e": if (expand) { e.preventDefault(); expand.click(); } break;
      case "f":
        if (card) {
          const d = card.querySelector("details.flags");
          if (d) { e.preventDefault(); d.open = true; const box = d.querySelector("input"); if (box) box.focus(); }
        }
        break;
      default:
    }
  });

  // --- submit ----------------------------------------------------------------------------------
  function trySubmit(confirmed) {
    if (submitting) return;
    const r = ranks(), g = ratings();
    const cids = cards.map((c) => c.dataset.cid);
    const unrated = cids.filter((c) => g[c] === null);
    const unranked = cids.filter((c) => r[c] === null);
    if (unrated.length || unranked.length) {
      const parts = [];
      if (unrated.length) parts.push("rate " + unrated.map(label).join(", ") + " (1–7)");
      if (unranked.length) parts.push("rank " + unranked.map(label).join(", "));
      formError.textContent = "Before submitting: " + parts.join("; ") + ".";
      show(formError);
      byCid.get(unrated[0] || unranked[0]).focus();
      return;
    }
    const clashes = [];
    for (const a of cids) for (const b of cids) {
      if (r[a] < r[b] && g[b] > g[a]) {
        clashes.push(label(b) + " is ranked below " + label(a) + " but rated higher (" + g[b] + " > " + g[a] + ")");
      }
    }
    if (clashes.length && !confirmed) {
      const list = document.getElementById("consistency-list");
      list.textContent = "";
      clashes.forEach((text) => list.appendChild(el("li", "", text)));
      show(warning);
      document.getElementById("confirm-btn").focus();
      return;
    }
    document.getElementById("confirm-inconsistent").value = clashes.length ? "1" : "0";
    document.getElementById("time-spent").value = spent();
    submitting = true;
    document.getElementById("submit-btn").disabled = true;
    save();
  }

  const save = kit.saver(form);
  form.addEventListener("submit", (e) => { e.preventDefault(); trySubmit(false); });
  document.getElementById("confirm-btn").addEventListener("click", () => trySubmit(true));
  document.getElementById("fix-btn").addEventListener("click", () => {
    hide(warning);
    focusCard(0);
  });
  skipForm.addEventListener("submit", () => { skipForm.querySelector(".time-spent").value = spent(); });
  document.getElementById("skip-btn").addEventListener("click", openSkip);
  document.getElementById("skip-cancel").addEventListener("click", () => { closePanels(); focusCard(0); });
  for (const c of cards) {
    rankInput(c).addEventListener("input", changed);
    c.addEventListener("change", (e) => { if (e.target.type === "radio") hide(warning); });
  }
  drawBoard();
  if (!document.getElementById("server-error")) cards[0].focus({ preventScroll: true });
})();
