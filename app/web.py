"""Templates: one per page, fragments as named blocks rendered alone for htmx requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from app.auth.deps import ANON_CSRF_COOKIE, CSRF_FIELD

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
