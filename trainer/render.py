"""The one renderer: a conversation (plus, for scoring and SFT, the assistant's reply) as token ids.

Every path that gives a model a prompt goes through here: sampling, reward-model training and
scoring, PPO rollouts and scoring, SFT, evaluation and the token-limit check. It uses the
tokenizer's own chat template through `apply_chat_template`; a tokenizer without one (a base
model, the tiny test GPT-2) gets FALLBACK_TEMPLATE, a plain Jinja template, through the same call:

    System: {system}\\n\\n          (only when there is a system message)
    User: {user}\\n\\n
    Assistant: {reply}{eos}\\n\\n
    ...
    Assistant:                     (the generation prompt; the reply's first token carries the space)

The generation prompt ends at "Assistant:" and not at "Assistant: " because a BPE tokenizer
joins a space to the word after it: with the space in the prompt, the prompt's tokens would
not be a prefix of the prompt-with-reply's tokens.

A reply's tokens are those of render(conversation + reply) past those of render(conversation,
generation prompt). `reply_ids` checks that the second is a prefix of the first and raises
TemplateError when it is not (a template that rewrites earlier turns once a reply follows, or a
generation prompt that the reply's first token merges into) rather than mis-masking silently.
The reply's tokens run up to and including the template's last end-of-turn token (ChatML's
`<|im_end|>`, the fallback's EOS): that token is what SFT must learn and where generation
stops. What a template writes after it (ChatML's "\\n") is dropped: a model that stops at the
end-of-turn token never writes it, so the reward model scores and PPO trains on exactly the
tokens a rollout has.

Message text is encoded as text, never as control tokens (`sanitize_control_tokens`): a user
who types `<|im_end|>` cannot end a turn. Conversations are normalised (app.chat.normalise)
before rendering, so one (conversation, reply) always gives one sequence of ids.

No torch or transformers import at module level: the functions take a transformers tokenizer;
only `generation_batch` builds tensors.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.chat import FALLBACK_TEMPLATE, ChatError, Conversation, normalise, with_reply

if TYPE_CHECKING:
    from torch import Tensor

_PROBE = "ranklab-reply-probe"  # an assistant reply no template writes by itself


class TemplateError(ValueError):
    """The chat template cannot be used to tell a reply's tokens from the prompt's."""


@dataclass(frozen=True)
class Rendered:
    """Prompt and reply as one sequence: `input_ids[:prompt_len]` is the prompt with its
    generation prompt, `input_ids[prompt_len:]` the reply through its end-of-turn token."""

    input_ids: list[int]
    prompt_len: int

    @property
    def reply_len(self) -> int:
        return len(self.input_ids) - self.prompt_len

    @property
    def reply_mask(self) -> list[int]:
        """1 on the reply's tokens (SFT's loss, PPO's response), 0 on the prompt's."""
        return [0] * self.prompt_len + [1] * self.reply_len


def chat_template(tokenizer: Any) -> str | None:
    """The template to render with: None means the tokenizer's own, else the fallback."""
    return None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE


def has_own_template(tokenizer: Any) -> bool:
    return chat_template(tokenizer) is None


def _render(tokenizer: Any, conv: Conversation, *, generation_prompt: bool, tokenize: bool = True) -> Any:
    import jinja2

    try:
        return tokenizer.apply_chat_template(
            normalise(conv),
            chat_template=chat_template(tokenizer),
            add_generation_prompt=generation_prompt,
            tokenize=tokenize,
            return_dict=False,
            sanitize_control_tokens=tokenize,  # text rendering has no tokens to protect
        )
    except jinja2.TemplateError as exc:  # the template's own raise_exception, or a syntax error
        raise TemplateError(f"the chat template refused this conversation: {exc}") from exc


def _check_prompt(conv: Conversation) -> None:
    if not conv:
        raise ChatError("messages", "is empty: give at least one user message")
    if conv[-1]["role"] != "user":
        raise ChatError(
            f"messages[{len(conv) - 1}].role", "the model answers a conversation that ends with a user turn"
        )


def prompt_ids(tokenizer: Any, conv: Conversation) -> list[int]:
    """The conversation with the generation prompt: what the model continues."""
    _check_prompt(conv)
    return list(_render(tokenizer, conv, generation_prompt=True))


def prompt_text(tokenizer: Any, conv: Conversation) -> str:
    """The same as text (for `/v1/completions` on a base model, and for reading in a log)."""
    _check_prompt(conv)
    return str(_render(tokenizer, conv, generation_prompt=True, tokenize=False))


def fallback_prompt_text(conv: Conversation, *, eos_token: str = "") -> str:
    """`prompt_text` with the fallback template and no tokenizer at hand (the `openai` backend's
    `/v1/completions` for a model whose tokenizer is not on this machine): earlier assistant
    turns end with `eos_token`, unknown here and so empty by default."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _check_prompt(conv)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        FALLBACK_TEMPLATE
    )  # as transformers sets Jinja up
    return template.render(messages=normalise(conv), add_generation_prompt=True, eos_token=eos_token)


def count_prompt_tokens(tokenizer: Any, conv: Conversation) -> int:
    """The token-limit check: how many positions the prompt takes before the first new token."""
    return len(prompt_ids(tokenizer, conv))


def reply_ids(tokenizer: Any, conv: Conversation, reply: str) -> Rendered:
    """Prompt and reply as the model sees them when scoring or learning the reply.

    Raises TemplateError when the prompt's tokens are not a prefix of the prompt-with-reply's.
    """
    prompt = prompt_ids(tokenizer, conv)
    full = list(_render(tokenizer, with_reply(conv, reply), generation_prompt=False))
    if full[: len(prompt)] != prompt:
        at = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(full))
        seen = tokenizer.convert_ids_to_tokens(full[at : at + 3]) if at < len(full) else "the end"
        raise TemplateError(
            "the chat template renders a conversation with its reply differently from the same "
            f"conversation with the generation prompt (token {at}: the prompt has "
            f"{tokenizer.convert_ids_to_tokens(prompt[at : at + 3])}, prompt + reply has {seen}), so the "
            "reply's tokens cannot be told apart; use a model whose template keeps earlier turns as "
            "they are, or remove the tokenizer's chat_template to use the plain fallback"
        )
    tail = full[len(prompt) :]
    stops = set(stop_token_ids(tokenizer))
    ends = [i for i, t in enumerate(tail) if t in stops]
    if ends:
        tail = tail[: ends[-1] + 1]
    return Rendered(input_ids=prompt + tail, prompt_len=len(prompt))


# --- where generation stops ---------------------------------------------------------------------

_stops: weakref.WeakKeyDictionary[Any, tuple[object, list[int]]] = weakref.WeakKeyDictionary()


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS, then the token(s) the template writes to end an assistant turn (SmolLM2's
    `<|im_end|>`): found by rendering a probe reply and keeping the added tokens after it."""
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id)
    cached = _stops.get(tokenizer)
    if cached is not None and cached[0] == key:
        return list(cached[1])
    text = str(
        _render(
            tokenizer,
            [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _PROBE}],
            generation_prompt=False,
            tokenize=False,
        )
    )
    at = text.rfind(_PROBE)
    if at < 0:
        raise TemplateError(
            "the chat template does not write the assistant's reply; it cannot be used to score one"
        )
    after = tokenizer(text[at + len(_PROBE) :], add_special_tokens=False)["input_ids"]
    atomic = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    stops = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    stops += [t for t in dict.fromkeys(after) if t in atomic and t not in stops]
    _stops[tokenizer] = (key, stops)
    return list(stops)


def first_stop(ids: Sequence[int], stops: Sequence[int]) -> int | None:
    """Index of the first stop token in generated ids (None: the reply never ended)."""
    wanted = set(stops)
    return next((i for i, t in enumerate(ids) if t in wanted), None)


def strip_special(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids as stored text: no special or template tokens, no whitespace at the ends."""
    return str(tokenizer.decode(list(ids), skip_special_tokens=True)).strip()


# --- lengths -----------------------------------------------------------------------------------


def fit(rendered: Rendered, max_length: int) -> Rendered:
    """At most max_length tokens, the prompt cut from the left: the reply is what is judged or
    learnt, so it stays whole; a reply longer than max_length keeps its last max_length tokens
    (the end is where a decoder reads the score), with no prompt left."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    extra = len(rendered.input_ids) - max_length
    if extra <= 0:
        return rendered
    if extra <= rendered.prompt_len:
        return Rendered(input_ids=rendered.input_ids[extra:], prompt_len=rendered.prompt_len - extra)
    return Rendered(input_ids=rendered.input_ids[-max_length:], prompt_len=0)


def fit_prompt(ids: Sequence[int], max_length: int) -> list[int]:
    """A prompt cut from the left to max_length tokens (the latest turns are what is answered)."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    return list(ids[-max_length:])


def pad_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise TemplateError("the tokenizer has neither a pad nor an EOS token to pad a batch with")
    return int(pid)


def generation_batch(
    tokenizer: Any, convs: Sequence[Conversation], *, max_length: int | None = None
) -> dict[str, Tensor]:
    """Prompts left-padded for `generate`: input_ids and attention_mask, both (B, T)."""
    import torch

    rows = [prompt_ids(tokenizer, c) for c in convs]
    if max_length is not None:
        rows = [fit_prompt(r, max_length) for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}
