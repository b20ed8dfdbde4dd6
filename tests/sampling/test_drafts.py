"""A demonstration set: its tasks open on import, and the `sample` job writes one draft per task
beside them (the tasks stay open and the set active all along), with the tiny local policy."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.labeling.models import Completion, Task
from app.prompts import sampling
from app.prompts.models import PromptSet
from tests.sampling.conftest import add_version, make_set, set_of
from tests.sampling.test_sampling import job_of, tasks_of, wrap_backends
from trainer.worker import Worker


def test_tasks_open_on_import_and_the_job_writes_one_draft_each_without_closing_them(
    committed: sessionmaker[Session], settings: Settings, tiny_policy_path: Path, monkeypatch: object
) -> None:
    vid = add_version(committed, tiny_policy_path)
    set_id, job_id = make_set(committed, settings, vid, n=3, kind="demonstration", batch_prompts=2)
    ps = set_of(committed, set_id)
    assert ps.kind == "demonstration" and ps.status == "active" and ps.k == 1
    before = tasks_of(committed, set_id)
    assert len(before) == 3 and all(t.status == "open" and not t.completions for t in before)
    with committed() as s:
        prog = sampling.progress(session=s, prompt_set=s.get(PromptSet, set_id))  # type: ignore[arg-type]
        assert (prog.done, prog.total, prog.written, prog.needed) == (0, 3, 0, 3)

    seen: list[str] = []

    def during(_prompts: object, _kw: object) -> None:  # the tasks are open while drafts are written
        with committed() as s:
            seen.extend(s.scalars(select(Task.status).where(Task.prompt_set_id == set_id)))

    wrap_backends(monkeypatch, during)  # type: ignore[arg-type]
    assert Worker(committed, worker_id="w1").run_one()
    job = job_of(committed, job_id)
    assert job.status == "succeeded", job.error
    assert seen and set(seen) == {"open"}
    after = tasks_of(committed, set_id)
    assert [len(t.completions) for t in after] == [1, 1, 1]
    assert all(t.status == "open" and t.label_count == 0 for t in after)
    assert {t.id for t in after} == {t.id for t in before}  # no new tasks
    for t in after:
        (draft,) = t.completions
        assert draft.model_version_id == vid and draft.params["draft"] is True
    assert set_of(committed, set_id).status == "active"
    with committed.begin() as s:
        prog = sampling.progress(session=s, prompt_set=s.get(PromptSet, set_id))  # type: ignore[arg-type]
        assert (prog.done, prog.total) == (3, 3)
        ps = s.get(PromptSet, set_id)
        assert sampling.resume_sampling(session=s, prompt_set=ps) is None  # type: ignore[arg-type]


def test_a_job_run_again_writes_no_second_draft(
    committed: sessionmaker[Session], settings: Settings, tiny_policy_path: Path
) -> None:
    vid = add_version(committed, tiny_policy_path)
    set_id, _ = make_set(committed, settings, vid, n=2, kind="demonstration")
    with committed.begin() as s:
        first = s.scalars(select(Task).where(Task.prompt_set_id == set_id).order_by(Task.id)).first()
        assert first is not None
        s.add(Completion(task_id=first.id, text="Already drafted.", finish_reason="stop"))
    assert Worker(committed, worker_id="w1").run_one()
    with committed.begin() as s:
        ps = s.get(PromptSet, set_id)
        assert ps is not None
        sampling.start_sampling(session=s, prompt_set=ps)  # a second job over the same set
    assert Worker(committed, worker_id="w2").run_one()
    drafts = [len(t.completions) for t in tasks_of(committed, set_id)]
    assert drafts == [1, 1]
    texts = [t.completions[0].text for t in tasks_of(committed, set_id)]
    assert texts[0] == "Already drafted."
