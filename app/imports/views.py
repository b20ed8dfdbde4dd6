"""Preference import in the browser: /exports/import (researchers and admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from app.auth.deps import CurrentResearcher
from app.db import SessionDep
from app.imports import service as imports
from app.web import render

router = APIRouter(tags=["imports"])
api = APIRouter(tags=["imports"])


@router.get("/exports/import")
def import_page(request: Request, user: CurrentResearcher) -> Response:
    return render(request, "imports/import.html", {"kinds": imports.KINDS})


@router.post("/exports/import")
async def import_upload(
    request: Request,
    user: CurrentResearcher,
    session: SessionDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()] = "auto",
    skip_invalid: Annotated[bool, Form()] = False,
) -> Response:
    limit = int(request.app.state.settings.max_upload_mb * 1024 * 1024)
    data = await file.read(limit + 1)
    ctx: dict[str, Any] = {"kinds": imports.KINDS, "name": name, "kind": kind}
    if len(data) > limit:
        ctx["refused"] = f"{file.filename}: larger than {request.app.state.settings.max_upload_mb:g} MB"
        return render(request, "imports/import.html", ctx, status_code=413)
    try:
        result = imports.import_preferences(
            session=session,
            data=data,
            filename=file.filename or "upload",
            name=name,
            kind=kind,
            skip_invalid=skip_invalid,
            created_by_id=user.id,
        )
    except imports.ImportRefused as exc:
        session.rollback()
        ctx.update(refused=str(exc), errors=[str(e) for e in exc.errors], filename=file.filename)
        return render(request, "imports/import.html", ctx, status_code=422)
    ctx.update(result=result, skipped=[str(e) for e in result.skipped], filename=file.filename)
    return render(request, "imports/import.html", ctx)
