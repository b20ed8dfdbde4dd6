"""The demonstration page in Debian's Chromium: a reply written with the keyboard only, one
started from a draft, keys typed in the editor kept as text, hostile text shown inert, a skip."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from app.labeling.models import Annotation, Completion, Demonstration
from app.prompts.models import PromptSet
from tests.browser.conftest import LiveServer
from tests.browser.test_labeling_page import log_in
from tests.factories import make_prompt_set, make_task, make_user

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & say hi'
DRAFT = "Hello there.\nHow can I help?"


def fresh(live: LiveServer, *, drafts: list[str | None]) -> dict[str, Any]:
    """A labeler and a demonstration set of their own, one task per entry (with that draft, as
    the background job writes it: a Completion row)."""
    with live.sessions() as s:
        s.execute(update(PromptSet).values(status="paused"))
        user = make_user(s)
        ps = make_prompt_set(s, kind="demonstration", overlap=1)
        tasks = [
            make_task(
                s,
                prompt_set=ps,
                messages=[
                    {"role": "system", "content": f"Be kind ({n})."},
                    {"role": "user", "content": HOSTILE},
                ],
            )
            for n in range(len(drafts))
        ]
        for task, draft in zip(tasks, drafts, strict=True):
            if draft is not None:
                s.add(Completion(task_id=task.id, text=draft, finish_reason="stop"))
        s.commit()
        return {"username": user.username, "task_ids": [t.id for t in tasks]}


def demonstration(live: LiveServer, task_id: int) -> tuple[Annotation, Demonstration | None]:
    with live.sessions() as s:
        ann = s.scalars(select(Annotation).where(Annotation.task_id == task_id)).one()
        demo = s.scalars(select(Demonstration).where(Demonstration.annotation_id == ann.id)).first()
        return ann, demo


class TestDemonstrationPage:
    def test_keyboard_only_then_from_a_draft(self, page: Any, live_server: LiveServer) -> None:
        from playwright.sync_api import expect

        data = fresh(live_server, drafts=[None, DRAFT])
        log_in(page, data["username"], ready="#reply")
        expect(page.locator("#queue-pos")).to_have_text("Task 1 of 2")
        # Hostile text in the conversation is text: no element made, no script run.
        expect(page.locator("#prompt-text")).to_have_text(HOSTILE)
        assert page.locator(".prompt-card img, .prompt-card script").count() == 0
        assert page.evaluate("window.__pwned") is None
        # No draft yet for this task: `d` (outside the editor) says so.
        page.keyboard.press("Escape")
        page.keyboard.press("d")
        expect(page.locator("#draft-status")).to_contain_text("not ready yet")
        # Back to the editor with Enter; keys typed there are text, not shortcuts (s, g, d, ?).
        page.keyboard.press("Enter")
        page.keyboard.type("Yes: dogs go ?")
        page.keyboard.press("Enter")
        page.keyboard.type("s g d.")
        expect(page.locator("#skip-form")).to_be_hidden()
        expect(page.locator("#guidelines")).to_be_hidden()
        assert page.input_value("#reply") == "Yes: dogs go ?\ns g d."
        page.keyboard.press("Control+Enter")
        expect(page.locator("#queue-pos")).to_have_text("Task 2 of 2")
        ann, demo = demonstration(live_server, data["task_ids"][0])
        assert demo is not None and demo.reply == "Yes: dogs go ?\ns g d."
        assert (demo.draft_used, demo.draft_completion_id, demo.edit_distance) == (False, None, None)
        assert ann.time_spent_ms is not None and ann.skip_reason is None
        # The second task has a draft: Esc leaves the editor, `d` fills it, the labeler edits it.
        expect(page.locator("#draft-status")).to_contain_text("ready")
        page.keyboard.press("Escape")
        page.keyboard.press("d")
        assert page.input_value("#reply") == DRAFT
        page.keyboard.type("Hi! ")  # the caret is at the start of the draft
        page.keyboard.press("Control+Enter")
        expect(page.locator("main")).to_contain_text("Nothing")
        _, demo = demonstration(live_server, data["task_ids"][1])
        assert demo is not None and demo.reply == "Hi! " + DRAFT
        assert demo.draft_used and demo.draft_completion_id is not None and demo.edit_distance == 4

    def test_an_empty_reply_is_refused_on_the_page_and_a_skip_takes_a_reason(
        self, page: Any, live_server: LiveServer
    ) -> None:
        from playwright.sync_api import expect

        data = fresh(live_server, drafts=[None])
        log_in(page, data["username"], ready="#reply")
        page.keyboard.type("   ")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#form-error")).to_contain_text("the reply is empty")
        # What was typed is kept across a reload (localStorage, per assignment).
        page.keyboard.type("draft kept")
        page.reload()
        page.wait_for_selector("#reply")
        assert page.input_value("#reply") == "   draft kept"
        page.keyboard.press("Escape")
        page.keyboard.press("s")
        expect(page.locator("#skip-form")).to_be_visible()
        page.select_option("#skip-reason", "unclear")
        page.keyboard.press("Enter")
        expect(page.locator("main")).to_contain_text("Nothing")
        ann, demo = demonstration(live_server, data["task_ids"][0])
        assert ann.skip_reason == "unclear" and demo is None
