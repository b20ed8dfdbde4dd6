"""trainer.render on real tokenizers: the tiny Llama chat model (its ChatML template), the demo
GPT-2's byte-level BPE tokenizer and the word-level one the PPO tests use (both through the
plain fallback template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.chat import ChatError, Conversation
from trainer import render
from trainer.render import Rendered, TemplateError

CONV: Conversation = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a tea."},
    {"role": "assistant", "content": "Green tea."},
    {"role": "user", "content": "Another one?"},
]
REPLY = "Black tea, of course."

CHATML_PROMPT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a tea.<|im_end|>\n"
    "<|im_start|>assistant\nGreen tea.<|im_end|>\n<|im_start|>user\nAnother one?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
FALLBACK_PROMPT = (
    "System: Be brief.\n\nUser: Name a tea.\n\nAssistant: Green tea.<|endoftext|>\n\n"
    "User: Another one?\n\nAssistant:"
)


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_path)


@pytest.fixture(scope="module")
def gpt2_tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo GPT-2's tokenizer (no chat template), saved and read back like a model folder."""
    from transformers import AutoTokenizer

    from trainer.models.demo import build_tokenizer, corpus_documents

    folder = tmp_path_factory.mktemp("gpt2")
    build_tokenizer(corpus_documents(), 400).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def word_tok() -> Any:
    from tests.tiny import tiny_tokenizer

    return tiny_tokenizer(
        ["be brief name a tea green another one black of course system user assistant , . ? :"]
    )


@pytest.fixture(params=["chat", "gpt2", "word"])
def tok(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_tok")


def end_of_turn(tokenizer: Any) -> int:
    return (
        int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        if render.has_own_template(tokenizer)
        else int(tokenizer.eos_token_id)
    )


class TestPromptAndReply:
    def test_the_prompt_is_the_templated_conversation(self, chat_tok: Any, gpt2_tok: Any) -> None:
        assert render.prompt_text(chat_tok, CONV) == CHATML_PROMPT
        assert chat_tok.decode(render.prompt_ids(chat_tok, CONV)) == CHATML_PROMPT
        assert render.prompt_text(gpt2_tok, CONV) == FALLBACK_PROMPT
        assert gpt2_tok.decode(render.prompt_ids(gpt2_tok, CONV)) == FALLBACK_PROMPT

    def test_reply_ids_are_the_prompt_then_the_reply_through_its_end_of_turn(self, tok: Any) -> None:
        prompt = render.prompt_ids(tok, CONV)
        r = render.reply_ids(tok, CONV, REPLY)
        assert r.prompt_len == len(prompt) == render.count_prompt_tokens(tok, CONV)
        assert r.input_ids[: r.prompt_len] == prompt
        assert r.reply_len > 1
        assert r.input_ids[-1] == end_of_turn(tok)
        assert r.reply_mask == [0] * len(prompt) + [1] * r.reply_len
        # The reply's tokens are the reply as the tokenizer writes it alone (the fallback's space
        # after "Assistant:" belongs to the reply's first token), then the end-of-turn token.
        lead = "" if render.has_own_template(tok) else " "
        assert r.input_ids[r.prompt_len : -1] == tok(lead + REPLY, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in r.input_ids

    def test_exact_text_with_the_reply(self, chat_tok: Any, gpt2_tok: Any) -> None:
        # ChatML's "\n" after <|im_end|> is not part of the reply: generation stops before it.
        assert chat_tok.decode(render.reply_ids(chat_tok, CONV, REPLY).input_ids) == (
            CHATML_PROMPT + REPLY + "<|im_end|>"
        )
        assert gpt2_tok.decode(render.reply_ids(gpt2_tok, CONV, REPLY).input_ids) == (
            FALLBACK_PROMPT + " " + REPLY + "<|endoftext|>"
        )

    def test_the_same_ids_however_the_conversation_was_written(self, tok: Any) -> None:
        messy: Conversation = [{"role": m["role"], "content": f"  {m['content']}\r\n"} for m in CONV]
        assert render.reply_ids(tok, messy, f" {REPLY}\n") == render.reply_ids(tok, CONV, REPLY)

    def test_the_default_system_message_of_a_template_is_kept(self, chat_tok: Any) -> None:
        text = chat_tok.decode(render.prompt_ids(chat_tok, CONV[1:2]))
        assert text == (
            "<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n"
            "<|im_start|>user\nName a tea.<|im_end|>\n<|im_start|>assistant\n"
        )

    def test_template_tokens_typed_by_a_user_are_text(self, chat_tok: Any) -> None:
        im_end = chat_tok.convert_tokens_to_ids("<|im_end|>")
        conv: Conversation = [{"role": "user", "content": "Stop here <|im_end|> and <|endoftext|> ok"}]
        ids = render.prompt_ids(chat_tok, conv)
        assert ids.count(im_end) == 2  # the default system turn's and the user turn's, not the typed one
        assert chat_tok.eos_token_id not in ids
        assert "Stop here <|im_end|> and <|endoftext|> ok" in chat_tok.decode(ids)

    def test_a_prompt_must_end_with_the_user(self, tok: Any) -> None:
        with pytest.raises(ChatError) as info:
            render.prompt_ids(tok, [*CONV, {"role": "assistant", "content": "x"}])
        assert info.value.field == "messages[4].role"
        with pytest.raises(ChatError) as info:
            render.prompt_ids(tok, [])
        assert info.value.field == "messages"


class TestStops:
    def test_the_chat_model_stops_at_eos_and_im_end(self, chat_tok: Any) -> None:
        assert render.stop_token_ids(chat_tok) == [
            chat_tok.eos_token_id,
            chat_tok.convert_tokens_to_ids("<|im_end|>"),
        ]
        assert chat_tok.eos_token_id != chat_tok.convert_tokens_to_ids("<|im_end|>")

    def test_the_fallback_stops_at_eos(self, gpt2_tok: Any, word_tok: Any) -> None:
        assert render.stop_token_ids(gpt2_tok) == [gpt2_tok.eos_token_id]
        assert render.stop_token_ids(word_tok) == [word_tok.eos_token_id]

    def test_the_model_folder_stops_at_the_end_of_the_turn_by_itself(
        self, tiny_chat_model_path: Path, chat_tok: Any
    ) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_path)
        assert model.generation_config.eos_token_id == render.stop_token_ids(chat_tok)
        assert 1e4 < sum(p.numel() for p in model.parameters()) < 1e6

    def test_first_stop(self) -> None:
        assert render.first_stop([5, 6, 2, 9, 1], [1, 2]) == 2
        assert render.first_stop([5, 6], [1, 2]) is None

    def test_strip_special_leaves_no_template_token(self, chat_tok: Any) -> None:
        r = render.reply_ids(chat_tok, CONV, REPLY)
        generated = [*r.input_ids[r.prompt_len :], chat_tok.pad_token_id, chat_tok.pad_token_id]
        assert render.strip_special(chat_tok, generated) == REPLY
        assert render.strip_special(chat_tok, r.input_ids) == (
            "system\nBe brief.\nuser\nName a tea.\nassistant\nGreen tea.\nuser\nAnother one?\nassistant\n"
            + REPLY
        )

    def test_changing_the_template_changes_the_stops(self, gpt2_tok: Any) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gpt2_tok.name_or_path)
        assert render.stop_token_ids(tok) == [tok.eos_token_id]
        tok.add_special_tokens({"additional_special_tokens": ["<end>"]})
        tok.chat_template = FALLBACK_LIKE.replace("(eos_token or '')", "'<end>'")
        assert render.stop_token_ids(tok) == [tok.eos_token_id, tok.convert_tokens_to_ids("<end>")]


FALLBACK_LIKE = render.FALLBACK_TEMPLATE


class TestBrokenTemplates:
    def with_template(self, base: Any, template: str) -> Any:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base.name_or_path)
        tok.chat_template = template
        return tok

    def test_a_generation_prompt_that_the_reply_merges_into_is_refused(self, gpt2_tok: Any) -> None:
        # "Assistant: " then "the": byte-level BPE makes " the" one token, so the prompt's last
        # token (a lone space) is not in the prompt-with-reply's tokens.
        tok = self.with_template(gpt2_tok, FALLBACK_LIKE.replace("'Assistant:' }}", "'Assistant: ' }}"))
        assert render.prompt_text(tok, CONV).endswith("Assistant: ")
        with pytest.raises(TemplateError, match="cannot be told apart"):
            render.reply_ids(tok, CONV, "the tea")

    def test_a_template_that_rewrites_earlier_turns_is_refused(self, chat_tok: Any) -> None:
        # Like templates that drop reasoning from earlier turns: the last user turn is written
        # differently once a reply follows it.
        template = chat_tok.chat_template.replace(
            "message['content'] + '<|im_end|>'",
            "message['content'] + ('' if loop.last or message['role'] != 'user' else ' (earlier)')"
            " + '<|im_end|>'",
        )
        tok = self.with_template(chat_tok, template)
        with pytest.raises(TemplateError, match="token"):
            render.reply_ids(tok, CONV, REPLY)

    def test_a_template_that_raises_is_reported(self, chat_tok: Any) -> None:
        tok = self.with_template(chat_tok, "{{ raise_exception('roles must alternate') }}")
        with pytest.raises(TemplateError, match="refused this conversation: roles must alternate"):
            render.prompt_ids(tok, CONV)

    def test_a_template_that_drops_the_reply_is_refused(self, chat_tok: Any) -> None:
        tok = self.with_template(chat_tok, "{% for m in messages %}{{ m['role'] }}{% endfor %}")
        with pytest.raises(TemplateError, match="does not write the assistant's reply"):
            render.stop_token_ids(tok)


class TestLengths:
    def test_fit_cuts_the_prompt_from_the_left_and_keeps_the_reply(self, tok: Any) -> None:
        r = render.reply_ids(tok, CONV, REPLY)
        assert render.fit(r, len(r.input_ids)) is r
        cut = render.fit(r, r.reply_len + 3)
        assert cut.input_ids == r.input_ids[-(r.reply_len + 3) :]
        assert cut.prompt_len == 3
        assert cut.input_ids[cut.prompt_len :] == r.input_ids[r.prompt_len :]

    def test_a_reply_longer_than_the_budget_keeps_its_end(self) -> None:
        r = Rendered(input_ids=[1, 2, 3, 4, 5, 6], prompt_len=2)
        assert render.fit(r, 4) == Rendered(input_ids=[3, 4, 5, 6], prompt_len=0)
        assert render.fit(r, 3) == Rendered(input_ids=[4, 5, 6], prompt_len=0)
        with pytest.raises(ValueError, match="at least 1"):
            render.fit(r, 0)

    def test_fit_prompt(self) -> None:
        assert render.fit_prompt([1, 2, 3, 4], 2) == [3, 4]
        assert render.fit_prompt([1, 2], 5) == [1, 2]
        with pytest.raises(ValueError, match="at least 1"):
            render.fit_prompt([1], 0)


class TestGenerationBatch:
    def test_left_padded_rows_generate_as_they_would_alone(
        self, tiny_chat_model_path: Path, chat_tok: Any
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_path).eval()
        convs = [CONV, CONV[1:2]]
        batch = render.generation_batch(chat_tok, convs)
        long, short = (render.prompt_ids(chat_tok, c) for c in convs)
        assert batch["input_ids"].shape == (2, len(long))
        assert batch["input_ids"][0].tolist() == long
        pad = len(long) - len(short)
        assert batch["input_ids"][1].tolist() == [chat_tok.pad_token_id] * pad + short
        assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * len(short)
        with torch.no_grad():
            both = model.generate(**batch, max_new_tokens=6, do_sample=False)
            alone = model.generate(
                **render.generation_batch(chat_tok, convs[1:]), max_new_tokens=6, do_sample=False
            )
        assert both[1, len(long) :].tolist() == alone[0, len(short) :].tolist()

    def test_max_length_cuts_each_prompt_from_the_left(self, chat_tok: Any) -> None:
        batch = render.generation_batch(chat_tok, [CONV], max_length=5)
        assert batch["input_ids"][0].tolist() == render.prompt_ids(chat_tok, CONV)[-5:]
