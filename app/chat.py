"""Conversations: the shape of a prompt, its rules, its canonical form. Torch-free, no database.

A prompt is a list of `{role, content}` messages that ends with a user turn (the model answers
it); a plain string is the one-user-message case. The rules, checked by `parse_conversation`:

- roles are system, user and assistant; a system message may only come first;
- content is a non-empty string (whitespace alone is empty);
- the last message is from the user;
- consecutive turns of the same role are allowed (HH-RLHF and hand-written data have them;
  a template that refuses them says so when the conversation is rendered);
- keys other than role and content are ignored (OpenAI-style `name`, tool fields).

Conversations are stored normalised (`normalise`: NFC, `\\r\\n` -> `\\n`, content stripped at
the ends), so the same prompt given as a string, as `{"messages": [...]}` or with stray
whitespace is one prompt, with one `conversation_hash`.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


Conversation = list[Message]


class ChatError(ValueError):
    """A conversation broke a rule. `field` is where (`messages[2].role`), the message says how
    to fix it; str(error) is both, for a caller that shows one line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- parsing -----------------------------------------------------------------------------------


def parse_conversation(value: Any, *, field: str = "messages") -> Conversation:
    """A checked, normalised conversation from a list of `{role, content}` objects.

    Raises ChatError naming the first broken rule's place (`{field}[i].role` or
    `{field}[i].content`, or `field` itself for the list).
    """
    if not isinstance(value, list):
        raise ChatError(field, 'must be a list of messages like {"role": "user", "content": "..."}')
    if not value:
        raise ChatError(field, "is empty: give at least one user message")
    out: Conversation = []
    for i, item in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ChatError(at, 'must be an object like {"role": "user", "content": "..."}')
        role = item.get("role")
        if "role" not in item:
            raise ChatError(f"{at}.role", "is missing: use system, user or assistant")
        if role not in ROLES:
            raise ChatError(f"{at}.role", f"{role!r} is not a role: use system, user or assistant")
        if role == "system" and i > 0:
            raise ChatError(f"{at}.role", "a system message may only come first; move it to the start")
        content = item.get("content")
        if "content" not in item:
            raise ChatError(f"{at}.content", "is missing: give the message's text")
        if not isinstance(content, str):
            raise ChatError(f"{at}.content", f"must be text, not {_kind(content)}")
        if not content.strip():
            raise ChatError(f"{at}.content", "is empty: give the message's text")
        out.append({"role": cast(Role, role), "content": content})
    if out[-1]["role"] != "user":
        raise ChatError(
            f"{field}[{len(out) - 1}].role",
            f"the last message must be from the user (the model answers it), not {out[-1]['role']}; "
            "end with a user turn",
        )
    return normalise(out)


def from_text(prompt: str, *, system: str | None = None) -> Conversation:
    """A plain prompt (and optional system message) as a conversation: errors name `prompt` or
    `system`, the keys of an upload row in this shape."""
    if not isinstance(prompt, str):
        raise ChatError("prompt", f"must be text, not {_kind(prompt)}")
    if not prompt.strip():
        raise ChatError("prompt", "is empty: give the prompt's text")
    conv: Conversation = []
    if system is not None:
        if not isinstance(system, str):
            raise ChatError("system", f"must be text, not {_kind(system)}")
        if not system.strip():
            raise ChatError("system", "is empty: give the system message's text, or leave the key out")
        conv.append({"role": "system", "content": system})
    conv.append({"role": "user", "content": prompt})
    return normalise(conv)


def with_reply(conv: Conversation, reply: str) -> Conversation:
    """The conversation followed by the assistant's reply (for scoring and SFT)."""
    if not conv or conv[-1]["role"] != "user":
        raise ChatError("messages", "a reply answers a conversation that ends with a user turn")
    if not isinstance(reply, str):
        raise ChatError("reply", f"must be text, not {_kind(reply)}")
    return [*conv, {"role": "assistant", "content": reply}]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --- canonical form ---------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """NFC, one kind of line break, no whitespace at the ends."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def normalise(conv: Conversation) -> Conversation:
    """A new conversation with every content normalised and only role and content kept."""
    return [{"role": m["role"], "content": normalise_text(m["content"])} for m in conv]


def conversation_hash(conv: Conversation) -> str:
    """sha256 hex of the canonical JSON of the normalised conversation: duplicates share it."""
    canonical = json.dumps(normalise(conv), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


LABELS: dict[Role, str] = {"system": "System", "user": "User", "assistant": "Assistant"}


def as_text(conv: Conversation) -> str:
    """A readable plain rendering, for showing or searching a prompt as text. A lone user
    message is exactly its content; otherwise each turn is `Label: content`, blank-line apart.
    Never model input: models see conversations through trainer.render."""
    if len(conv) == 1 and conv[0]["role"] == "user":
        return conv[0]["content"]
    return "\n\n".join(f"{LABELS[m['role']]}: {m['content']}" for m in conv)


# --- HH-RLHF dialogue text --------------------------------------------------------------------

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_START = re.compile(r"(Human|Assistant):")


def split_hh(dialogue: str) -> Conversation:
    """HH-RLHF text `"\\n\\nHuman: a\\n\\nAssistant: b ..."` as turns (Human -> user, Assistant ->
    assistant), content normalised. Text before the first turn marker is dropped and so is a
    trailing empty Assistant turn (the prompt form ends with one), as the importer always did;
    a dialogue that starts with `Human:` without the two newlines is read the same. Not checked
    against the conversation rules: `split_hh_reply` and `parse_conversation` do that.
    """
    if _HH_START.match(dialogue):
        dialogue = "\n\n" + dialogue
    parts = HH_TURN.split(dialogue)
    turns: Conversation = [
        {"role": "user" if who == "Human" else "assistant", "content": normalise_text(text)}
        for who, text in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns


def split_hh_reply(dialogue: str, *, field: str = "chosen") -> tuple[Conversation, str]:
    """One HH-RLHF dialogue as (prompt, reply): the reply is its last turn, which must be the
    Assistant's; the prompt is every turn before it and must be a valid conversation. Errors
    name `field` (`chosen`, or `chosen[2].content` for a turn)."""
    turns = split_hh(dialogue)
    if not turns:
        raise ChatError(field, "has no '\\n\\nHuman:' turn: not an HH-RLHF dialogue")
    if turns[-1]["role"] != "assistant":
        raise ChatError(field, "does not end with an '\\n\\nAssistant:' turn: the reply is missing")
    return parse_conversation(turns[:-1], field=field), turns[-1]["content"]


@dataclass(frozen=True)
class HHPair:
    prompt: Conversation
    chosen: str
    rejected: str


def split_hh_pair(chosen: str, rejected: str) -> HHPair:
    """An HH-RLHF row: one prompt conversation with two replies. Refuses two different
    dialogues (field `chosen/rejected`) and two equal replies (field `rejected`)."""
    prompt, good = split_hh_reply(chosen, field="chosen")
    other, bad = split_hh_reply(rejected, field="rejected")
    if prompt != other:
        at = next((i for i, (a, b) in enumerate(zip(prompt, other, strict=False)) if a != b), None)
        where = f"at turn {at}" if at is not None else f"in length ({len(prompt)} and {len(other)} turns)"
        raise ChatError(
            "chosen/rejected",
            f"two different dialogues, not one prompt with two endings (they differ {where})",
        )
    if good == bad:
        raise ChatError("rejected", "the same reply as chosen: no preference")
    return HHPair(prompt=prompt, chosen=good, rejected=bad)
