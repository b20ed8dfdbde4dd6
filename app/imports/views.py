"""Preference import in the browser: /exports/import (researchers and admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from app.auth.deps import CurrentResearcher
from app.db import SessionDep, undone_on_error
from app.errors import TooLarge
from app.imports import service as imports
from app.imports.upload import Upload
from app.web import read_upload, render

router = APIRouter(tags=["imports"])
api = APIRouter(tags=["imports"])


@router.get("/exports/import")
def import_page(request: Request, user: CurrentResearcher) -> Response:
    return render(request, "imports/import.html", {"kinds": imports.KINDS})


@router.post("/exports/import")
def import_upload(
    request: Request,
    user: CurrentResearcher,
    session: SessionDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()] = "auto",
    skip_invalid: Annotated[bool, Form()] = False,
) -> Response:
    """A plain `def`: reading and parsing the file blocks, so it runs in the thread pool."""
    ctx: dict[str, Any] = {"kinds": imports.KINDS, "name": name, "kind": kind}
    try:
        data = read_upload(file, settings=request.app.state.settings)
    except TooLarge as exc:
        ctx["refused"] = exc.message
        return render(request, "imports/import.html", ctx, status_code=exc.status_code)
    try:
        with undone_on_error(session):
            upload = Upload(data, file.filename or "upload", name, kind, skip_invalid, user.id)
            result = imports.import_preferences(session, upload)
    except imports.ImportRefused as exc:
        ctx.update(refused=str(exc), errors=[str(e) for e in exc.errors], filename=file.filename)
        return render(request, "imports/import.html", ctx, status_code=422)
    ctx.update(result=result, skipped=[str(e) for e in result.skipped], filename=file.filename)
    return render(request, "imports/import.html", ctx)
