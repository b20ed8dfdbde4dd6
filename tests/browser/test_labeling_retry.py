"""A busy server (503 + Retry-After) when the labeler submits: the page keeps what was entered,
shows that it is saving, retries by itself, and the third try lands."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveServer
from tests.browser.test_labeling_page import fresh, letters, log_in, stored

pytestmark = pytest.mark.browser


def test_two_503s_then_the_submission_lands_with_nothing_lost(page: Any, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    data = fresh(live_server, prompts=["Only prompt: say hello."])
    log_in(page, data["username"])
    ids = letters(page)
    posts: list[str] = []

    def busy_twice(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(route.request.post_data or "")
        if len(posts) <= 2:
            route.fulfill(status=503, headers={"Retry-After": "1"}, body='{"detail": "busy"}')
        else:
            route.continue_()

    page.route("**/label/*", busy_twice)
    # A: rate 6, rank 1. B: rate 5, rank 2. C: rate 2, rank 3; notes typed as well.
    for key in ("6", "ArrowUp", "j", "5", "ArrowDown", "j", "2", "ArrowDown"):
        page.keyboard.press(key)
    assert [page.input_value(f"input[name=rank-{ids[x]}]") for x in "ABC"] == ["1", "2", "3"]
    page.fill("#notes", "B repeats itself")
    page.fill(f"input[name=note-{ids['C']}]", "off topic")
    page.locator("#submit-btn").click()
    expect(page.locator("#saving")).to_be_visible()
    expect(page.locator("#saving")).to_contain_text("Saving")
    assert page.input_value("#notes") == "B repeats itself"  # still there while it retries
    expect(page.locator("h1")).to_have_text("Nothing to label right now", timeout=15_000)
    assert len(posts) == 3 and posts[0] == posts[2]  # the same answers, sent again
    ann = stored(live_server, data["task_ids"][0])
    by_cid = {i.completion_id: i for i in ann.items}
    assert [(by_cid[ids[x]].rank, by_cid[ids[x]].rating) for x in "ABC"] == [(1, 6), (2, 5), (3, 2)]
    assert ann.notes == "B repeats itself\nC: off topic"
