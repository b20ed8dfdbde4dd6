"""One definition per job kind (app/runs/params): the forms, the CLI options and the JSON API are
made from it and agree with it; validation names the field and starts nothing."""

from __future__ import annotations

import html
import re
from typing import Any

import click
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth
from app.cli import cli
from app.runs.models import Job
from app.runs.params import ROUND, TRAIN_PPO, TRAIN_REWARD, TRAIN_SFT, JobSpec, ParamsError
from tests.factories import bearer, login, make_model_version, make_prompt_set, make_user

PAGES = [
    ("/runs/new/reward", TRAIN_REWARD),
    ("/runs/new/ppo", TRAIN_PPO),
    ("/runs/new/round", ROUND),
    ("/runs/new/sft", TRAIN_SFT),
]
COMMANDS = [
    (("train", "reward"), TRAIN_REWARD),
    (("train", "ppo"), TRAIN_PPO),
    (("round",), ROUND),
    (("train", "sft"), TRAIN_SFT),
]


def shown_value(page: str, name: str) -> str | None:
    """The value a form shows for field `name`: an input's value or a select's selected option."""
    m = re.search(rf'<input name="{name}"[^>]*?value="([^"]*)"', page)
    if m:
        return html.unescape(m.group(1))
    m = re.search(rf'<select name="{name}">(.*?)</select>', page, re.S)
    if m:
        chosen = re.search(r'<option value="([^"]*)" selected', m.group(1))
        return chosen.group(1) if chosen else None
    return None


class TestFormsAgreeWithTheDefinition:
    @pytest.mark.parametrize(("path", "spec"), PAGES, ids=["reward", "ppo", "round", "sft"])
    def test_every_field_shows_its_default_label_and_help(
        self, client: TestClient, session: Session, path: str, spec: JobSpec
    ) -> None:
        login(client, make_user(session, role="researcher"))
        page = client.get(path).text
        for p in spec.fields:
            if not p.form:
                assert f'name="{p.name}"' not in page
                continue
            assert str(escape(p.help)) in page, p.name
            if p.widget in ("sets", "file"):
                assert f'name="{p.name}"' in page
            else:
                assert shown_value(page, p.name) == p.shown(p.default), p.name

    def test_bad_fields_are_named_and_nothing_starts(self, client: TestClient, session: Session) -> None:
        make_model_version(session, kind="reward", is_active=True)
        csrf = login(client, make_user(session, role="researcher"))
        r = client.post(
            "/runs/new/ppo",
            data={"csrf_token": csrf, "batch_size": "4", "mini_batch_size": "8", "mixed_precision": "fp8"},
        )
        assert r.status_code == 422
        assert "mixed_precision: one of auto, bf16, fp16, no, not &#39;fp8&#39;" in r.text
        r = client.post("/runs/new/ppo", data={"csrf_token": csrf, "batch_size": "4", "mini_batch_size": "8"})
        assert r.status_code == 422 and "mini_batch_size: at most batch_size (4)" in r.text
        assert 'value="8"' in r.text  # what was typed is shown again
        assert session.scalar(select(func.count(Job.id))) == 0

    def test_an_empty_box_means_the_default_and_advanced_fields_are_taken(
        self, client: TestClient, session: Session
    ) -> None:
        csrf = login(client, make_user(session, role="researcher"))
        r = client.post(
            "/runs/new/reward",
            data={"csrf_token": csrf, "base_model": "./m", "lr": "", "grad_accum": "4", "bf16": "false"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        job = session.scalar(select(Job))
        assert job is not None and job.params == {
            "sets": [],
            "base_model": "./m",
            "grad_accum": 4,
            "bf16": False,
        }


class TestCommandsAgreeWithTheDefinition:
    @pytest.mark.parametrize(("path", "spec"), COMMANDS, ids=["reward", "ppo", "round", "sft"])
    def test_every_field_is_an_option_with_its_range_and_default(
        self, path: tuple[str, ...], spec: JobSpec
    ) -> None:
        command: Any = cli
        for name in path:
            command = command.commands[name]
        options = {p.name: p for p in command.params if isinstance(p, click.Option)}
        for p in spec.fields:
            assert p.name in options, f"ranklab {' '.join(path)} has no option for {p.name}"
            opt = options[p.name]
            assert p.help in (opt.help or ""), p.name
            if p.default not in (None, "", ()) and p.type in (int, float):
                shown = f"{p.default:g}" if p.type is float else str(p.default)
                assert f"Default: {shown}." in (opt.help or ""), p.name
            if p.type is int and p.name != "reward_version_id":
                assert isinstance(opt.type, click.IntRange) and (opt.type.min, opt.type.max) == (
                    p.low,
                    p.high,
                )

    @pytest.mark.parametrize("path", [("train", "ppo"), ("round",)], ids=["ppo", "round"])
    def test_a_cross_field_rule_is_a_usage_error(self, path: tuple[str, ...]) -> None:
        """The round takes PPO's size too (a short round on CPU), so it checks it as PPO does:
        the default minibatch (16) is refused with a batch of 4, before anything is queued."""
        from click.testing import CliRunner

        out = CliRunner().invoke(cli, [*path, "--batch-size", "4"])
        assert out.exit_code == 2 and "mini_batch_size: at most batch_size (4)" in out.output


class TestValidate:
    def test_converts_and_keeps_only_what_was_given(self) -> None:
        assert TRAIN_PPO.validate({"iterations": "5", "beta": "0.1", "kl_target": None}) == {
            "iterations": 5,
            "beta": 0.1,
            "kl_target": None,
        }

    def test_unknown_and_out_of_range_fields_are_each_named(self) -> None:
        with pytest.raises(ParamsError) as exc:
            TRAIN_REWARD.validate({"lrr": 1})
        assert exc.value.errors == ["lrr: no such parameter of train_reward"]
        with pytest.raises(ParamsError) as exc:
            TRAIN_REWARD.validate({"lr": 2, "epochs": 0})
        assert exc.value.errors == [
            "lr: a number from 1e-09 to 1, not 2",
            "epochs: a whole number from 1 to 100, not 0",
        ]


class TestJobsApi:
    def _token(self, session: Session, role: str) -> dict[str, str]:
        return bearer(auth.create_token(session=session, user=make_user(session, role=role), name="t").token)

    def test_starts_a_run_with_exactly_the_fields_sent(self, client: TestClient, session: Session) -> None:
        make_prompt_set(session, name="round-1")
        make_model_version(session, kind="reward", is_active=True)
        headers = self._token(session, "researcher")
        r = client.post(
            "/api/v1/jobs/train_ppo",
            json={"sets": ["round-1"], "iterations": 20, "beta": 0.05},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["kind"] == "train_ppo" and body["status"] == "queued"
        job = session.get(Job, body["id"])
        assert job is not None and job.params == {"sets": ["round-1"], "iterations": 20, "beta": 0.05}
        r = client.post("/api/v1/jobs/train_reward", json={"base_model": "./m", "lr": 2e-5}, headers=headers)
        assert r.status_code == 201 and session.get(Job, r.json()["id"]).params == {
            "base_model": "./m",
            "lr": 2e-5,
        }  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"iterations": 0}, "iterations"),
            ({"betaa": 1}, "betaa"),
            ({"batch_size": 4, "mini_batch_size": 8}, None),
            ({"sets": ["nope"]}, "sets"),
            ({"ptx_file": "/etc/passwd"}, "ptx_file"),
        ],
    )
    def test_bad_params_answer_422_naming_the_field(
        self, client: TestClient, session: Session, body: dict[str, Any], field: str | None
    ) -> None:
        make_model_version(session, kind="reward", is_active=True)
        r = client.post("/api/v1/jobs/train_ppo", json=body, headers=self._token(session, "researcher"))
        assert r.status_code == 422
        detail = r.json()["detail"]
        if field is None:
            assert "mini_batch_size: at most batch_size (4)" in str(detail)
        else:
            assert any(e["field"] == field for e in detail), detail
        assert session.scalar(select(func.count(Job.id))) == 0

    def test_without_an_active_reward_model_ppo_is_refused(
        self, client: TestClient, session: Session
    ) -> None:
        r = client.post("/api/v1/jobs/train_ppo", json={}, headers=self._token(session, "researcher"))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "reward_version_id"

    def test_labelers_are_refused(self, client: TestClient, session: Session) -> None:
        r = client.post(
            "/api/v1/jobs/train_reward", json={"base_model": "x"}, headers=self._token(session, "labeler")
        )
        assert r.status_code == 403 and session.scalar(select(func.count(Job.id))) == 0

    def test_the_openapi_page_documents_every_field(self, client: TestClient) -> None:
        schemas = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
        for spec in (TRAIN_REWARD, TRAIN_PPO):
            props = schemas[spec.model.__name__]["properties"]
            assert set(props) == {p.name for p in spec.fields if p.api}
            for p in spec.fields:
                if p.api:
                    assert props[p.name]["description"] == p.help
        assert schemas["TrainPpoParams"]["properties"]["iterations"]["minimum"] == 1
