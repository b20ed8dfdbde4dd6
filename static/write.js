// The conversation editor (templates/prompts/_conversation.html): add and remove turns.
document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("turns-editor");
  const add = document.getElementById("add-turn");
  if (!list || !add) return;
  add.addEventListener("click", () => {
    const items = list.querySelectorAll("li.turn-edit");
    const last = items[items.length - 1];
    const turn = last.cloneNode(true);
    const previous = last.querySelector("select").value;
    turn.querySelector("select").value = previous === "user" ? "assistant" : "user";
    turn.querySelector("textarea").value = "";
    list.appendChild(turn);
    turn.querySelector("textarea").focus();
  });
  list.addEventListener("click", (event) => {
    if (!event.target.classList.contains("remove-turn")) return;
    if (list.querySelectorAll("li.turn-edit").length > 1) event.target.closest("li").remove();
  });
});
