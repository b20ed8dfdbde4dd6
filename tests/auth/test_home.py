"""The home page links to what the user's role may use, and nothing else."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth.models import Role
from tests.factories import login, make_user

LINKS = {"/label", "/runs", "/exports", "/sets", "/admin/users", "/account/tokens"}
EXPECTED = {
    Role.labeler: {"/label", "/account/tokens"},
    Role.researcher: {"/runs", "/exports", "/account/tokens"},
    Role.admin: LINKS,
}


@pytest.mark.parametrize("role", list(Role))
def test_home_links_follow_the_role(role: Role, client: TestClient, session: Session) -> None:
    user = make_user(session, role=role)
    login(client, user)
    page = client.get("/").text
    shown = {link for link in LINKS if f'class="card link" href="{link}"' in page}
    assert shown == EXPECTED[role]
    assert f"{user.username} · {role.value}" in page


def test_anonymous_home_goes_to_login(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"


@pytest.mark.parametrize("role", list(Role))
def test_every_link_on_home_and_in_the_nav_opens(role: Role, client: TestClient, session: Session) -> None:
    import re

    login(client, make_user(session, role=role))
    page = client.get("/").text
    hrefs = {h for h in re.findall(r'href="(/[^"]*)"', page) if not h.startswith("/static/")}
    assert hrefs
    for href in sorted(hrefs):
        r = client.get(href, follow_redirects=False)
        assert r.status_code == 200, f"{role.value}: {href} answered {r.status_code}"


def test_no_link_sits_inside_another(client: TestClient, session: Session) -> None:
    """A link inside a card's link is closed early by the browser and spills out of the card."""
    from html.parser import HTMLParser

    class Nesting(HTMLParser):
        depth, worst = 0, 0

        def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
            if tag == "a":
                self.depth += 1
                self.worst = max(self.worst, self.depth)

        def handle_endtag(self, tag: str) -> None:
            if tag == "a":
                self.depth -= 1

    login(client, make_user(session, role=Role.admin))
    parser = Nesting()
    parser.feed(client.get("/").text)
    assert parser.worst == 1
