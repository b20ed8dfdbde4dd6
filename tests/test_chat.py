"""app.chat: the conversation rules, their errors (each with its field), the canonical form,
HH-RLHF splitting."""

from __future__ import annotations

from typing import Any

import pytest

from app.chat import (
    ChatError,
    Conversation,
    as_text,
    conversation_hash,
    from_text,
    normalise,
    parse_conversation,
    split_hh,
    split_hh_pair,
    split_hh_reply,
    with_reply,
)

THREE_TURNS: Conversation = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a tea."},
    {"role": "assistant", "content": "Green tea."},
    {"role": "user", "content": "Another one?"},
]


def refused(value: Any, **kw: Any) -> ChatError:
    with pytest.raises(ChatError) as info:
        parse_conversation(value, **kw)
    return info.value


class TestParseConversation:
    def test_a_valid_conversation_comes_back_as_given(self) -> None:
        assert parse_conversation([dict(m) for m in THREE_TURNS]) == THREE_TURNS

    def test_content_is_normalised_and_extra_keys_dropped(self) -> None:
        got = parse_conversation(
            [{"role": "user", "content": "  Cafe\u0301\r\nau lait?\n", "name": "ann", "id": 3}]
        )
        assert got == [{"role": "user", "content": "Caf\u00e9\nau lait?"}]

    def test_consecutive_turns_of_one_role_are_allowed(self) -> None:
        conv = [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"},
        ]
        assert parse_conversation(conv) == conv

    @pytest.mark.parametrize(
        ("value", "field", "words"),
        [
            ("hello", "messages", "must be a list of messages"),
            ({"role": "user", "content": "x"}, "messages", "must be a list of messages"),
            (None, "messages", "must be a list of messages"),
            ([], "messages", "is empty: give at least one user message"),
            (["hi"], "messages[0]", "must be an object"),
            ([{"content": "x"}], "messages[0].role", "is missing: use system, user or assistant"),
            ([{"role": "bot", "content": "x"}], "messages[0].role", "'bot' is not a role"),
            ([{"role": None, "content": "x"}], "messages[0].role", "None is not a role"),
            ([{"role": "User", "content": "x"}], "messages[0].role", "'User' is not a role"),
            ([{"role": "user"}], "messages[0].content", "is missing"),
            ([{"role": "user", "content": None}], "messages[0].content", "must be text, not null"),
            ([{"role": "user", "content": 3}], "messages[0].content", "must be text, not int"),
            (
                [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                "messages[0].content",
                "must be text, not list",
            ),
            ([{"role": "user", "content": ""}], "messages[0].content", "is empty"),
            ([{"role": "user", "content": " \n\t "}], "messages[0].content", "is empty"),
            (
                [
                    {"role": "user", "content": "a"},
                    {"role": "system", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
                "messages[1].role",
                "a system message may only come first",
            ),
            (
                [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "messages[1].role",
                "the last message must be from the user",
            ),
            ([{"role": "system", "content": "a"}], "messages[0].role", "not system"),
        ],
    )
    def test_each_broken_rule_names_its_field(self, value: Any, field: str, words: str) -> None:
        err = refused(value)
        assert err.field == field
        assert words in err.message
        assert str(err) == f"{field}: {err.message}"
        assert isinstance(err, ValueError)

    def test_the_first_broken_rule_is_reported(self) -> None:
        err = refused([{"role": "user", "content": "ok"}, {"role": "user", "content": ""}, {"role": "x"}])
        assert err.field == "messages[1].content"

    def test_the_field_prefix_is_the_callers(self) -> None:
        assert (
            refused([{"role": "user", "content": ""}], field="row.messages").field
            == "row.messages[0].content"
        )

    def test_the_input_is_not_changed(self) -> None:
        given = [{"role": "user", "content": " x ", "name": "n"}]
        parse_conversation(given)
        assert given == [{"role": "user", "content": " x ", "name": "n"}]


class TestFromText:
    def test_a_string_is_one_user_message(self) -> None:
        assert from_text("  What is tea?\r\n") == [{"role": "user", "content": "What is tea?"}]

    def test_with_a_system_message(self) -> None:
        assert from_text("Hi", system=" Be kind ") == [
            {"role": "system", "content": "Be kind"},
            {"role": "user", "content": "Hi"},
        ]

    @pytest.mark.parametrize(
        ("prompt", "system", "field", "words"),
        [
            ("", None, "prompt", "is empty"),
            ("  ", None, "prompt", "is empty"),
            (5, None, "prompt", "must be text, not int"),
            ("x", "", "system", "is empty"),
            ("x", 1, "system", "must be text, not int"),
        ],
    )
    def test_refuses(self, prompt: Any, system: Any, field: str, words: str) -> None:
        with pytest.raises(ChatError) as info:
            from_text(prompt, system=system)
        assert info.value.field == field
        assert words in info.value.message


class TestWithReply:
    def test_appends_the_assistant_turn(self) -> None:
        conv = from_text("Q")
        assert with_reply(conv, "A") == [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
        assert conv == [{"role": "user", "content": "Q"}]  # a new list

    def test_refuses_a_conversation_that_does_not_end_with_the_user(self) -> None:
        with pytest.raises(ChatError) as info:
            with_reply([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "B")
        assert info.value.field == "messages"
        with pytest.raises(ChatError) as info:
            with_reply([], "B")
        assert info.value.field == "messages"

    def test_refuses_a_reply_that_is_not_text(self) -> None:
        with pytest.raises(ChatError) as info:
            with_reply(from_text("Q"), None)  # type: ignore[arg-type]
        assert info.value.field == "reply"


class TestCanonicalForm:
    def test_normalise(self) -> None:
        conv: Conversation = [{"role": "user", "content": "\ufeff A\r\nB\rC e\u0301 "}]
        # U+FEFF is not whitespace to str.strip: it stays; NFC composes e + combining acute.
        assert normalise(conv) == [{"role": "user", "content": "\ufeff A\nB\nC \u00e9"}]

    def test_one_message_hashes_the_same_however_it_was_given(self) -> None:
        h = conversation_hash(from_text("What is tea?"))
        assert conversation_hash(parse_conversation([{"role": "user", "content": " What is tea?\r\n"}])) == h
        assert conversation_hash([{"role": "user", "content": "What is tea?  "}]) == h
        assert len(h) == 64 and int(h, 16) >= 0

    def test_the_hash_is_sha256_of_the_canonical_json(self) -> None:
        import hashlib

        expected = hashlib.sha256(b'[{"content":"Hi \xc3\xa9","role":"user"}]').hexdigest()
        assert conversation_hash([{"role": "user", "content": "Hi e\u0301"}]) == expected

    def test_different_conversations_hash_differently(self) -> None:
        hashes = {
            conversation_hash(from_text("Hi")),
            conversation_hash(from_text("Hi", system="Be kind")),
            conversation_hash(from_text("hi")),
            conversation_hash([{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hi"}]),
            conversation_hash([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}]),
        }
        assert len(hashes) == 5

    def test_as_text_of_one_user_message_is_its_content(self) -> None:
        assert as_text(from_text("What is tea?\nTell me.")) == "What is tea?\nTell me."

    def test_as_text_labels_the_turns(self) -> None:
        assert as_text(THREE_TURNS) == (
            "System: Be brief.\n\nUser: Name a tea.\n\nAssistant: Green tea.\n\nUser: Another one?"
        )
        assert as_text(from_text("Hi", system="Be kind")) == "System: Be kind\n\nUser: Hi"


HH = "\n\nHuman: Name a tea.\n\nAssistant: Green tea.\n\nHuman: Another one?\n\nAssistant: Black tea."


class TestHH:
    def test_split_into_turns(self) -> None:
        assert split_hh(HH) == [
            {"role": "user", "content": "Name a tea."},
            {"role": "assistant", "content": "Green tea."},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "Black tea."},
        ]

    def test_a_trailing_empty_assistant_turn_is_dropped(self) -> None:
        assert split_hh("\n\nHuman: Hi there \n\nAssistant:") == [{"role": "user", "content": "Hi there"}]
        assert split_hh("\n\nHuman: Hi\n\nAssistant:   ") == [{"role": "user", "content": "Hi"}]

    def test_text_before_the_first_turn_is_dropped(self) -> None:
        assert split_hh("preamble\n\nHuman: Hi\n\nAssistant: Yo") == [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"},
        ]

    def test_a_dialogue_without_the_leading_newlines_reads_the_same(self) -> None:
        assert split_hh(HH.lstrip("\n")) == split_hh(HH)

    def test_no_turns(self) -> None:
        assert split_hh("just text") == []

    def test_reply(self) -> None:
        prompt, reply = split_hh_reply(HH)
        assert prompt == split_hh(HH)[:3]
        assert reply == "Black tea."

    @pytest.mark.parametrize(
        ("dialogue", "field", "words"),
        [
            ("just text", "chosen", "has no '\\n\\nHuman:' turn"),
            ("\n\nHuman: Hi", "chosen", "does not end with an '\\n\\nAssistant:' turn"),
            ("\n\nHuman: Hi\n\nAssistant:", "chosen", "does not end with an '\\n\\nAssistant:' turn"),
            (
                "\n\nAssistant: Hi\n\nAssistant: Yo",
                "chosen[0].role",
                "the last message must be from the user",
            ),
            ("\n\nHuman: \n\nAssistant: Yo", "chosen[0].content", "is empty"),
            ("\n\nHuman: a\n\nAssistant:\n\nHuman: b\n\nAssistant: c", "chosen[1].content", "is empty"),
        ],
    )
    def test_reply_refuses(self, dialogue: str, field: str, words: str) -> None:
        with pytest.raises(ChatError) as info:
            split_hh_reply(dialogue)
        assert info.value.field == field
        assert words in info.value.message

    def test_pair(self) -> None:
        pair = split_hh_pair(HH, HH.replace("Black tea.", "Coffee."))
        assert pair.prompt == split_hh(HH)[:3]
        assert (pair.chosen, pair.rejected) == ("Black tea.", "Coffee.")

    @pytest.mark.parametrize(
        ("rejected", "field", "words"),
        [
            (
                HH.replace("Green", "Red").replace("Black tea.", "No."),
                "chosen/rejected",
                "they differ at turn 1",
            ),
            (
                "\n\nHuman: Name a tea.\n\nAssistant: No.",
                "chosen/rejected",
                "they differ in length (3 and 1 turns)",
            ),
            (HH + " ", "rejected", "the same reply as chosen"),
            ("\n\nHuman: x", "rejected", "does not end with"),
        ],
    )
    def test_pair_refuses(self, rejected: str, field: str, words: str) -> None:
        with pytest.raises(ChatError) as info:
            split_hh_pair(HH, rejected)
        assert info.value.field == field
        assert words in info.value.message
