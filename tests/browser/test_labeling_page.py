"""The labeling page in Debian's Chromium: mouse and keyboard, ties, the consistency warning,
skipping, hostile text shown as text, and a screenshot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.labeling.models import Annotation, Guideline
from app.prompts.models import PromptSet
from tests.browser.conftest import LiveServer, sign_in
from tests.factories import make_model_version, make_prompt_set, make_task, make_user

pytestmark = pytest.mark.browser


def fresh(
    live: LiveServer,
    *,
    k: int = 3,
    prompts: list[Any] | None = None,  # a string, or a conversation as a list of messages
    completions: list[str] | None = None,
    demo: bool = False,
) -> dict[str, Any]:
    """A new labeler and a prompt set of their own (older sets are paused, so tests don't mix)."""
    with live.sessions() as s:
        s.execute(update(PromptSet).values(status="paused"))
        user = make_user(s)
        ps = make_prompt_set(s, k=k, overlap=1)
        policy = make_model_version(s, is_demo=True) if demo else None
        tasks = [
            make_task(
                s,
                prompt_set=ps,
                prompt=p if isinstance(p, str) else None,
                messages=None if isinstance(p, str) else p,
                completions=completions,
                policy=policy,
            )
            for p in (prompts or ["First prompt: name a colour.", "Second prompt: name a fruit."])
        ]
        s.commit()
        return {"username": user.username, "task_ids": [t.id for t in tasks]}


def log_in(page: Any, username: str) -> None:
    sign_in(page, username)
    page.goto("/label")
    page.wait_for_selector("#rank-board .chip")


def letters(page: Any) -> dict[str, int]:
    return {
        k: int(v)
        for k, v in page.eval_on_selector_all(
            ".output", "els => els.map(e => [e.dataset.label, e.dataset.cid])"
        )
    }


def stored(live: LiveServer, task_id: int) -> Annotation:
    with live.sessions() as s:
        ann = s.scalars(select(Annotation).where(Annotation.task_id == task_id)).one()
        _ = ann.items
        return ann


def drag(page: Any, source: Any, target: Any) -> None:
    """A real pointer drag, in small steps, as SortableJS's pointer fallback expects."""
    page.locator("#rank-board").scroll_into_view_if_needed()
    a, b = source.bounding_box(), target.bounding_box()
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(a["x"] + a["width"] / 2 + 6, a["y"] + a["height"] / 2 + 6, steps=3)
    page.mouse.move(b["x"] + min(b["width"] / 2, 40), b["y"] + b["height"] / 2, steps=12)
    page.mouse.up()


def rank_of(page: Any, cid: int) -> str:
    return str(page.input_value(f"input[name=rank-{cid}]"))


class TestLabelingPage:
    def test_keyboard_ratings_drag_and_drop_ranks_a_tie_the_warning_then_the_next_task(
        self, page: Any, live_server: LiveServer
    ) -> None:
        from playwright.sync_api import expect

        data = fresh(live_server)
        log_in(page, data["username"])
        expect(page.locator("#queue-pos")).to_have_text("Task 1 of 2")
        ids = letters(page)
        # Ratings with the keyboard: the first output has focus when the page opens.
        for key in ("4", "j", "5", "j", "5"):
            page.keyboard.press(key)
        assert page.is_checked(f"input[name=rating-{ids['B']}][value='5']")
        # Ranks by drag and drop: A to the top, B below it, then C onto B's row (a tie).
        chip = lambda letter: page.locator(f"#rank-board .chip[data-cid='{ids[letter]}']")  # noqa: E731
        drag(page, chip("A"), page.locator("#rank-board .rank-gap").first)
        expect(page.locator(f"input[name=rank-{ids['A']}]")).to_have_value("1")
        drag(page, chip("B"), page.locator("#rank-board .rank-gap").nth(1))
        expect(page.locator(f"input[name=rank-{ids['B']}]")).to_have_value("2")
        drag(page, chip("C"), page.locator("#rank-board .rank-group[data-rank='2']"))
        expect(page.locator(f"input[name=rank-{ids['C']}]")).to_have_value("2")
        assert rank_of(page, ids["A"]) == "1"
        expect(page.locator("#out-B .rank-show")).to_contain_text("tied with C")
        # A is ranked first but rated lower than B and C: the check stops the submit.
        page.locator("#out-A").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#consistency")).to_be_visible()
        expect(page.locator("#consistency-list")).to_contain_text("B is ranked below A but rated higher")
        # Fix it: Esc closes the warning, back to A; rate it 6, submit.
        page.keyboard.press("Escape")
        expect(page.locator("#consistency")).to_be_hidden()
        page.keyboard.press("6")
        page.keyboard.press("Enter")
        expect(page.locator("#queue-pos")).to_have_text("Task 2 of 2")
        expect(page.locator("#prompt-text")).to_have_text("Second prompt: name a fruit.")
        ann = stored(live_server, data["task_ids"][0])
        by_cid = {i.completion_id: i for i in ann.items}
        assert [(by_cid[ids[x]].rank, by_cid[ids[x]].rating) for x in "ABC"] == [(1, 6), (2, 5), (2, 5)]
        assert ann.inconsistency_confirmed is False and ann.time_spent_ms is not None

    def test_the_same_with_the_keyboard_alone_confirming_the_warning(
        self, page: Any, live_server: LiveServer
    ) -> None:
        from playwright.sync_api import expect

        data = fresh(live_server, prompts=["Only prompt: say hello."])
        log_in(page, data["username"])
        ids = letters(page)
        # A: rate 4, rank 1. B: rate 5, rank 2. C: rate 6, rank 3 then up to 2 (tied with B).
        for key in ("4", "ArrowUp", "j", "5", "ArrowDown", "j", "6", "ArrowDown", "ArrowUp"):
            page.keyboard.press(key)
        assert [rank_of(page, ids[x]) for x in "ABC"] == ["1", "2", "2"]
        page.keyboard.press("Enter")
        expect(page.locator("#consistency")).to_be_visible()
        page.keyboard.press("y")
        expect(page.locator("h1")).to_have_text("Nothing to label right now")
        ann = stored(live_server, data["task_ids"][0])
        by_cid = {i.completion_id: i for i in ann.items}
        assert [(by_cid[ids[x]].rank, by_cid[ids[x]].rating) for x in "ABC"] == [(1, 4), (2, 5), (2, 6)]
        assert ann.inconsistency_confirmed is True

    def test_skip_with_a_reason(self, page: Any, live_server: LiveServer) -> None:
        from playwright.sync_api import expect

        data = fresh(live_server)
        log_in(page, data["username"])
        # The timers run; `?` hides and shows the key help.
        expect(page.locator("#task-timer")).to_have_text(re.compile(r"^0:0[1-9]$"))
        expect(page.locator("#session-timer")).to_have_text(re.compile(r"^\d+:\d\d$"))
        expect(page.locator("#keymap")).to_be_visible()
        page.keyboard.press("?")
        expect(page.locator("#keymap")).to_be_hidden()
        page.keyboard.press("?")
        expect(page.locator("#keymap")).to_be_visible()
        page.keyboard.press("s")
        expect(page.locator("#skip-reason")).to_be_focused()
        page.select_option("#skip-reason", "broken")
        page.keyboard.press("Enter")
        expect(page.locator("#queue-pos")).to_have_text("Task 2 of 2")
        ann = stored(live_server, data["task_ids"][0])
        assert ann.skip_reason == "broken" and ann.items == []

    def test_markup_in_prompts_and_outputs_is_shown_as_text_and_runs_nothing(
        self, page: Any, live_server: LiveServer
    ) -> None:
        from playwright.sync_api import expect

        prompt = (
            "Explain this snippet:\n<script>window.__pwned = 1; alert('prompt')</script>\n"
            "  <img src=x onerror=\"window.__pwned = 2; alert('img')\">"
        )
        output = "<img src=x onerror=alert('output')> and <script>alert('output2')</script>"
        data = fresh(live_server, k=2, prompts=[prompt], completions=[output, "A plain answer."])
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        log_in(page, data["username"])
        assert page.inner_text("#prompt-text") == prompt
        expect(page.locator(".output-text", has_text=output)).to_be_visible()
        assert page.locator("#prompt-text *, .output-text *").count() == 0  # no elements, only text
        page.wait_for_timeout(300)
        assert dialogs == [] and page.evaluate("window.__pwned") is None

    def test_a_long_instruction_is_folded_and_e_unfolds_it(self, page: Any, live_server: LiveServer) -> None:
        from playwright.sync_api import expect

        prompt = "\n".join(f"Step {i}: do the next thing." for i in range(40))
        data = fresh(live_server, k=2, prompts=[prompt])
        log_in(page, data["username"])
        expect(page.locator("#prompt-text")).to_have_class(re.compile(r"\bcollapsed\b"))
        page.keyboard.press("e")
        expect(page.locator("#prompt-text")).not_to_have_class(re.compile(r"\bcollapsed\b"))
        expect(page.locator("#expand-prompt")).to_have_attribute("aria-expanded", "true")
        assert page.inner_text("#prompt-text") == prompt

    def test_a_conversation_shows_every_turn_by_role_the_system_message_closed_and_markup_inert(
        self, page: Any, live_server: LiveServer, test_output: Path
    ) -> None:
        from playwright.sync_api import expect

        hostile = 'Is this safe? <script>window.pwned=1</script> <img src=x onerror="window.pwned=2">'
        long_reply = "\n".join(f"Point {i}: a detail of the earlier answer." for i in range(30))
        conversation = [
            {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
            {"role": "user", "content": hostile},
            {"role": "assistant", "content": long_reply},
            {"role": "user", "content": "And in one word?"},
        ]
        data = fresh(live_server, k=2, prompts=[conversation], completions=["No.", "Unsafe."])
        log_in(page, data["username"])
        turns = page.locator("#turns > li")
        expect(turns).to_have_count(4)
        roles = [turns.nth(i).locator(".role").first.inner_text() for i in range(4)]
        assert [r.split()[0] for r in roles] == ["System", "User", "Assistant", "User"]
        # The system message is closed: its text is on the page but hidden until opened.
        system = page.locator("#turns details")
        assert system.evaluate("d => d.open") is False
        expect(system.locator(".turn-text")).to_be_hidden()
        system.locator("summary").click()
        expect(system.locator(".turn-text")).to_have_text(conversation[0]["content"])
        # Markup in an earlier turn is text: shown as written, no element made, nothing run.
        expect(turns.nth(1).locator(".turn-text")).to_have_text(hostile)
        expect(turns.nth(1).locator(".turn-text")).to_be_visible()
        assert page.locator("#turns .turn-text *").count() == 0
        page.wait_for_timeout(300)
        assert page.evaluate("typeof window.pwned") == "undefined"
        # The long assistant turn is folded; `e` unfolds it; the latest user turn is the instruction.
        earlier = turns.nth(2).locator(".turn-text")
        expect(earlier).to_have_class(re.compile(r"\bcollapsed\b"))
        expect(page.locator("#prompt-text")).to_have_text("And in one word?")
        page.locator("#out-A").focus()
        page.keyboard.press("e")
        expect(earlier).not_to_have_class(re.compile(r"\bcollapsed\b"))
        expect(page.locator("#expand-prompt")).to_have_attribute("aria-expanded", "true")
        assert earlier.inner_text() == long_reply
        page.keyboard.press("e")
        expect(earlier).to_have_class(re.compile(r"\bcollapsed\b"))
        # The keyboard still labels the outputs: rate, rank, submit.
        ids = letters(page)
        page.locator("#out-A").focus()
        for key in ("6", "ArrowUp", "j", "2", "ArrowDown"):
            page.keyboard.press(key)
        page.evaluate("window.scrollTo(0, 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(test_output / "labeling-conversation.png"), full_page=True)
        assert (test_output / "labeling-conversation.png").stat().st_size > 10_000
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_have_text("Nothing to label right now")
        ann = stored(live_server, data["task_ids"][0])
        assert {i.completion_id: i.rank for i in ann.items} == {ids["A"]: 1, ids["B"]: 2}

    def test_screenshot_at_1280x800_and_a_narrow_screen(
        self, page: Any, live_server: LiveServer, test_output: Path
    ) -> None:
        from playwright.sync_api import expect

        with live_server.sessions() as s:
            s.add(
                Guideline(
                    version=1,
                    body=(
                        "# How to judge\n\nRate each output on its own first, then rank them all.\n\n"
                        "- **Helpful**: does what the instruction asks.\n- **Truthful**: invents nothing.\n"
                        "- **Harmless**: no advice that could hurt anyone.\n\nEqually good outputs may tie."
                    ),
                )
            )
            s.commit()
        data = fresh(
            live_server,
            k=4,
            demo=True,
            prompts=["Write a short, friendly note reminding my team that the office is closed on Friday."],
            completions=[
                "Hi all! Quick reminder: the office is closed this Friday. Enjoy the long weekend!",
                "Office closed Friday.",
                "Dear team,\n\nPlease note the office will be closed on Friday. Plan your week "
                "accordingly, and reach out if anything is urgent.\n\nThanks!",
                "The office is closed on Friday and Saturday because of the holiday in March.",
            ],
        )
        log_in(page, data["username"])
        for key in ("6", "j", "3", "j", "7", "j", "2"):
            page.keyboard.press(key)
        page.keyboard.press("g")
        expect(page.locator("#guidelines")).to_be_visible()
        expect(page.locator(".demo-badge")).to_have_text("demo model")
        ids = letters(page)
        chip = lambda letter: page.locator(f"#rank-board .chip[data-cid='{ids[letter]}']")  # noqa: E731
        drag(page, chip("C"), page.locator("#rank-board .rank-gap").first)
        expect(page.locator(f"input[name=rank-{ids['C']}]")).to_have_value("1")
        # The rest by keys: A second, B third, D tied with B.
        for letter, keys in (("A", ["ArrowDown"]), ("B", ["ArrowDown"]), ("D", ["ArrowDown", "ArrowUp"])):
            page.locator(f"#out-{letter}").focus()
            for key in keys:
                page.keyboard.press(key)
        assert [rank_of(page, ids[x]) for x in "CABD"] == ["1", "2", "3", "3"]
        page.locator("#out-A").focus()
        page.evaluate("window.scrollTo(0, 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(test_output / "labeling.png"), full_page=True)
        assert (test_output / "labeling.png").stat().st_size > 10_000
        page.set_viewport_size({"width": 390, "height": 844})
        page.keyboard.press("g")  # guidelines closed again on the phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        expect(page.locator("#submit-btn")).to_be_visible()
        page.screenshot(path=str(test_output / "labeling-narrow.png"), full_page=True)
