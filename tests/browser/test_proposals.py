"""In Chromium: a labeler writes a two-turn prompt with a system message and sends it; an admin
accepts it from the queue (htmx); the prompt is in the set and the labeler's history says so."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.prompts.models import Prompt, PromptProposal
from tests.browser.conftest import LiveServer, sign_in
from tests.factories import make_prompt_set, make_user

pytestmark = pytest.mark.browser


def test_a_labeler_proposes_a_prompt_and_an_admin_accepts_it(page: Any, live_server: LiveServer) -> None:
    with live_server.sessions() as s:
        labeler, admin = make_user(s), make_user(s, role="admin")
        ps = make_prompt_set(s, name="written prompts welcome")
        ps.allow_proposals = True
        s.commit()
        names, set_id = (labeler.username, admin.username), ps.id

    sign_in(page, names[0])
    page.click("text=Write a prompt")
    page.wait_for_url("**/prompts/write")
    page.select_option("select[name=prompt_set_id]", str(set_id))
    page.select_option("select[name=category]", "brainstorming")
    page.fill("textarea[name=system]", "Answer with a list.")
    page.locator("textarea[name=content]").nth(0).fill("Ideas for a rainy day?")
    page.click("#add-turn")
    assert page.locator("select[name=role]").nth(1).input_value() == "assistant"
    page.locator("textarea[name=content]").nth(1).fill("Read, bake, nap.")
    page.click("#add-turn")
    page.locator("textarea[name=content]").nth(2).fill("Something <b>with friends</b>?")
    page.click("button[type=submit]:has-text('Send for review')")
    page.wait_for_selector("#sent")

    page.context.clear_cookies()
    sign_in(page, names[1])
    page.goto("/proposals")
    row = page.locator("tr.proposal").filter(has_text="Ideas for a rainy day?")
    assert "Something <b>with friends</b>?" in row.inner_text()  # shown as text
    row.locator("button.accept").click()
    page.wait_for_selector("tr.proposal:has-text('accepted as prompt')")

    with live_server.sessions() as s:
        proposal = s.scalars(select(PromptProposal)).one()
        prompt = s.scalars(select(Prompt).where(Prompt.prompt_set_id == set_id)).one()
        assert proposal.status == "accepted" and proposal.prompt_id == prompt.id
        assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user"]
        assert prompt.meta["category"] == "brainstorming"

    page.context.clear_cookies()
    sign_in(page, names[0])
    page.goto("/label/history")
    assert "accepted into written prompts welcome" in page.locator("#written-prompts + table").inner_text()
