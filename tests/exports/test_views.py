"""Pages and API: download form, streaming downloads and manifests, import upload, quality page."""

from __future__ import annotations

import hashlib
import json
import re

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.exports.filters import pseudonym
from tests.exports.data import build, read_rows
from tests.factories import bearer, login, make_user


def _token(session: Session, role: str) -> str:
    return auth.create_token(session=session, user=make_user(session, role=role)).token


class TestAPI:
    def test_stream_and_manifest_with_token(self, client: TestClient, session: Session) -> None:
        w = build(session)
        h = bearer(_token(session, "researcher"))
        r = client.get(f"/api/v1/exports/trl?file=parquet&set={w.set_a.id}", headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/vnd.apache.parquet"
        assert "content-length" not in r.headers  # streamed in chunks, not built whole first
        assert 'filename="ranklab-trl-' in r.headers["content-disposition"]
        assert r.headers["link"].startswith(f"</api/v1/exports/trl/manifest?file=parquet&set={w.set_a.id}>")
        rows = read_rows(r.content, "parquet")
        assert len(rows) == 17 and set(rows[0]) == {"prompt", "chosen", "rejected"}
        m = client.get(f"/api/v1/exports/trl/manifest?file=parquet&set={w.set_a.id}", headers=h).json()
        assert m["sha256"] == hashlib.sha256(r.content).hexdigest()
        assert m["counts"]["rows"] == 17 and m["filters"]["prompt_set_ids"] == [w.set_a.id]

    def test_filters_and_errors(self, client: TestClient, session: Session) -> None:
        w = build(session)
        h = bearer(_token(session, "researcher"))
        r = client.get("/api/v1/exports/rankings?labeler=alice&since=2020-01-01&until=2029-01-01", headers=h)
        assert [json.loads(x)["annotation_id"] for x in r.text.splitlines()] == [
            w.anns["a1"].id,
            w.anns["a2"].id,
        ]
        r = client.get("/api/v1/exports/comparisons?file=jsonl.gz&split=train&min_labels=2", headers=h)
        assert r.status_code == 200 and all(x["split"] == "train" for x in read_rows(r.content, "jsonl.gz"))
        for query, field in [
            ("/api/v1/exports/csv", "format"),
            ("/api/v1/exports/trl?file=xlsx", "file"),
            ("/api/v1/exports/trl?labeler=nobody", "labeler"),
            ("/api/v1/exports/trl?since=yesterday", "since"),
            ("/api/v1/exports/trl?margin=huge", "margin"),
            ("/api/v1/exports/trl?set=abc", "set"),
            ("/api/v1/exports/trl?min_labels=two", "min_labels"),
            ("/api/v1/exports/trl?min_labels=-1", "min_labels"),
            (f"/api/v1/exports/trl?min_labels={2**31}", "min_labels"),  # PostgreSQL: no 500
            (f"/api/v1/exports/trl?set={10**20}", "set"),
            (f"/api/v1/exports/trl?policy={2**31}", "policy"),
            ("/api/v1/exports/trl?seed=1.5", "seed"),
            ("/api/v1/exports/trl?fractions=a,b,c", "fractions"),
        ]:
            r = client.get(query, headers=h)
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (query, r.text)

    def test_roles(self, client: TestClient, session: Session) -> None:
        build(session)
        assert client.get("/api/v1/exports/trl").status_code == 401
        assert (
            client.get("/api/v1/exports/trl", headers=bearer(_token(session, "labeler"))).status_code == 403
        )
        researcher = bearer(_token(session, "researcher"))
        r = client.get("/api/v1/exports/rankings?real_names=1", headers=researcher)
        assert r.status_code == 403 and "admin" in r.json()["detail"]
        r = client.get("/api/v1/exports/rankings?real_names=1", headers=bearer(_token(session, "admin")))
        assert {json.loads(x)["labeler"] for x in r.text.splitlines()} == {"alice", "bob"}
        r = client.get("/api/v1/exports/rankings", headers=researcher)
        names = {json.loads(x)["labeler"] for x in r.text.splitlines()}
        assert len(names) == 2 and all(re.fullmatch(r"L-[0-9a-f]{6}", n) for n in names)


class TestPages:
    def test_export_page_download_and_manifest(self, client: TestClient, session: Session) -> None:
        w = build(session)
        login(client, make_user(session, role="researcher"))
        page = client.get("/exports")
        assert page.status_code == 200 and 'action="/exports/download"' in page.text
        assert "set-a" in page.text and "policy-v1" in page.text and "real_names" not in page.text
        q = f"format=comparisons&file=jsonl&set={w.set_b.id}&fractions=1,0,0"
        r = client.get(f"/exports/download?{q}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        rows = read_rows(r.content, "jsonl")
        assert len(rows) == 3 and {x["split"] for x in rows} == {"train"}
        m = client.get(f"/exports/manifest?{q}").json()
        assert m["sha256"] == hashlib.sha256(r.content).hexdigest() and m["counts"]["ties"] == 1
        bad = client.get("/exports/download?format=comparisons&since=yesterday")
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")
        assert "since: not an ISO date" in bad.text

    def test_labeler_is_refused(self, client: TestClient, session: Session) -> None:
        login(client, make_user(session, role="labeler"))
        assert client.get("/exports").status_code == 403
        assert client.get("/quality").status_code == 403

    def test_import_upload(self, client: TestClient, session: Session) -> None:
        csrf = login(client, make_user(session, role="researcher"))
        bad = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "<b>x</b>", "chosen": 1}\n'
        r = client.post(
            "/exports/import",
            data={"name": "up", "csrf_token": csrf},
            files={"file": ("p.jsonl", bad, "application/json")},
        )
        assert r.status_code == 422
        assert "line 2: chosen: must be a string" in r.text and "line 2: rejected: missing" in r.text
        r = client.post(
            "/exports/import",
            data={"name": "up", "csrf_token": csrf, "skip_invalid": "true"},
            files={"file": ("p.jsonl", bad, "application/json")},
        )
        assert r.status_code == 200 and "Imported 1 of 2 rows" in r.text and "line 2" in r.text
        r = client.post(
            "/exports/import", data={"name": "up2"}, files={"file": ("p.jsonl", bad, "application/json")}
        )
        assert r.status_code == 403  # no CSRF token

    def test_quality_page_with_charts(self, client: TestClient, session: Session) -> None:
        w = build(session)
        login(client, make_user(session, role="researcher"))
        r = client.get(f"/quality?set={w.set_a.id}")
        assert r.status_code == 200 and r.text.count("<svg") == 3
        # t1: alice (1,1,2,3) and bob (1,2,3,4) agree on all 5 pairs both order strictly
        assert "100.0%</strong> of output pairs" in r.text
        secret = client.app.state.settings.secret_key  # type: ignore[attr-defined]
        assert pseudonym(w.alice.id, secret) in r.text and ">alice<" not in r.text
        frag = client.get(f"/quality?set={w.set_b.id}", headers={"HX-Request": "true"})
        assert frag.status_code == 200 and frag.text.lstrip().startswith('<div id="quality">')
        assert "No task has been labeled by two labelers yet" in frag.text
        bad = client.get("/quality?set=abc")
        assert bad.status_code == 422 and "set: not an id" in bad.text


def test_quality_api(client: TestClient, session: Session) -> None:
    w = build(session)
    h = bearer(_token(session, "researcher"))
    r = client.get(f"/api/v1/quality?set={w.set_a.id}", headers=h)
    assert r.status_code == 200, r.text
    q = r.json()
    assert q["agreement"]["rate"] == 1.0 and q["agreement"]["pairs"] == 5
    assert q["annotations"] == 3 and {x["annotations"] for x in q["labelers"]} == {1, 2}
    assert all(re.fullmatch(r"L-[0-9a-f]{6}", x["labeler"]) for x in q["labelers"])
    assert q["win_rates"] == []
    assert client.get("/api/v1/quality?real_names=1", headers=h).status_code == 403
    assert client.get("/api/v1/quality", headers=bearer(_token(session, "labeler"))).status_code == 403
    for query in ("set=abc", f"set={10**20}"):
        bad = client.get(f"/api/v1/quality?{query}", headers=h)
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "set"


def test_import_upload_over_the_size_limit_is_refused(
    client: TestClient, session: Session, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from app.prompts.models import PromptSet

    monkeypatch.setattr(client.app.state.settings, "max_upload_mb", 0.0001)  # type: ignore[attr-defined]
    csrf = login(client, make_user(session, role="researcher"))
    row = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    r = client.post(
        "/exports/import",
        data={"name": "big", "csrf_token": csrf},
        files={"file": ("big.jsonl", row * 10, "application/json")},
    )
    assert r.status_code == 413 and "larger than" in r.text
    assert session.scalar(select(func.count()).select_from(PromptSet).where(PromptSet.name == "big")) == 0


def test_the_export_query_parameters_are_in_the_openapi_page(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/exports/{fmt}", "/api/v1/exports/{fmt}/manifest"):
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert {"file", "set", "labeler", "min_labels", "split", "fractions", "margin"} <= set(params)
        assert params["set"]["schema"]["type"] == "array" and params["min_labels"]["description"]
