"""What browser routes share: templates (one per page, fragments as named blocks rendered alone
for htmx requests), the whole-form dependency and the one upload reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from app.auth.deps import ANON_CSRF_COOKIE, CSRF_FIELD
from app.config import Settings
from app.db import undone_on_error
from app.errors import Conflict, DomainError, Invalid, TooLarge

ROOT = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=str(ROOT / "templates"))


def csrf_token(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.user_session is not None:
        return str(principal.user_session.csrf_token)
    return str(getattr(request.state, "anon_csrf", None) or request.cookies.get(ANON_CSRF_COOKIE, ""))


def csrf_input(request: Request) -> Markup:
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, csrf_token(request))


templates.env.globals.update(csrf_token=csrf_token, csrf_input=csrf_input)


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    block: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The whole page, or only `block` of it when htmx asks."""
    principal = getattr(request.state, "principal", None)
    ctx = {"request": request, "user": principal.user if principal else None, **(context or {})}
    if block is not None and is_htmx(request):
        template = templates.env.get_template(name)
        html = "".join(template.blocks[block](template.new_context(ctx)))
        return HTMLResponse(html, status_code=status_code)
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


async def _form(request: Request) -> FormData:
    # Read here, on the event loop, so that the handler using it can be a plain `def` (run in
    # the thread pool): forms whose field names carry ids (rank-31) or lists are read whole.
    return await request.form()


FormDep = Annotated[FormData, Depends(_form)]


def attempt(session: Session, action: Callable[[], object]) -> DomainError | None:
    """Run a page's action, undoing its writes when refused: the refusal (Invalid, Conflict) to
    show beside the form again within the same request, or None when it went through."""
    try:
        with undone_on_error(session):
            action()
    except (Invalid, Conflict) as exc:
        return exc
    return None


def read_upload(upload: UploadFile, *, settings: Settings) -> bytes:
    """An uploaded file's bytes, never more than the limit (plus one byte to notice) in memory;
    TooLarge (413) past RANKLAB_MAX_UPLOAD_MB. Blocking: call it from a plain `def` handler."""
    limit = settings.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(
            f"{upload.filename or 'upload'}: the file is larger than the {settings.max_upload_mb:g} MB "
            "limit (RANKLAB_MAX_UPLOAD_MB)"
        )
    return data
