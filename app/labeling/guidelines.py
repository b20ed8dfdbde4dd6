"""Labeling guidelines: markdown, versioned; every annotation records the version in force."""

from __future__ import annotations

from markdown_it import MarkdownIt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import User
from app.errors import check_text
from app.labeling.finish import SubmissionInvalid
from app.labeling.models import Guideline


def latest_guideline(*, session: Session) -> Guideline | None:
    return session.scalars(select(Guideline).order_by(Guideline.version.desc()).limit(1)).first()


_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def render_markdown(body: str) -> str:
    """HTML from markdown with raw HTML off: tags in the text come out escaped, and markdown-it
    refuses javascript: and data: links."""
    return _md.render(body)


def save_guideline(*, session: Session, body: str, user: User | None) -> Guideline:
    body = body.strip()
    if not body:
        raise SubmissionInvalid("body", "the guidelines cannot be empty")
    check_text(body, field="body")
    latest = latest_guideline(session=session)
    g = Guideline(
        version=(latest.version + 1) if latest else 1, body=body, created_by_id=user.id if user else None
    )
    session.add(g)
    session.flush()
    return g


def list_guidelines(*, session: Session) -> list[Guideline]:
    return list(session.scalars(select(Guideline).order_by(Guideline.version.desc())).all())
