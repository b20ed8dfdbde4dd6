"""An upload into a new prompt set: every option and every prompt checked, then the set, its
prompts and its sampling stored whole, or nothing stored and ImportRejected says where and why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import refresh_statistics
from app.errors import Invalid, has_nul
from app.prompts.models import DEFAULT_FLAGS, Prompt, PromptSet, SetKind, SetStatus
from app.prompts.parsing import Problem, parse_prompt_file
from app.prompts.sampling import open_demonstration_tasks, start_sampling
from app.prompts.tokens import context_positions, token_counter, token_limit
from app.runs import policies
from app.runs.params import ParamsError
from app.runs.params.sample import SAMPLE

K_MIN, K_MAX = 4, 9
OVERLAP_MAX = 100
MAX_FLAGS = 30


class ImportRejected(Invalid):
    """The upload was refused; `problems` says where and why. Nothing was stored."""

    def __init__(self, problems: list[Problem], truncated: bool = False) -> None:
        first = problems[0]
        super().__init__(first.field, first.message, file=first.file, line=first.line)
        self.problems, self.truncated = problems, truncated
        self.args = ("; ".join(str(p) for p in problems[:3]),)


Complaint = tuple[str, str]  # (field, what is wrong)


def name_problems(session: Session, name: str) -> Iterator[Complaint]:
    if not name.strip():
        yield "name", "a prompt set needs a name"
    elif len(name) > 200:
        yield "name", "at most 200 characters"
    elif has_nul(name):  # PostgreSQL cannot even look such a name up
        yield "name", "contains a NUL character (\\u0000)"
    elif session.scalar(select(PromptSet.id).where(PromptSet.name == name.strip())) is not None:
        yield "name", f"a prompt set named {name.strip()!r} already exists; choose another name"


def shape_problems(kind: str, k: int, overlap: int, comparing: bool) -> Iterator[Complaint]:
    """The set's kind, K and overlap (`comparing`: a second policy version was asked for)."""
    if kind not in SetKind.__members__:
        yield "kind", f"must be {' or '.join(SetKind)}, got {kind!r}"
    if kind != SetKind.demonstration and not K_MIN <= k <= K_MAX:  # a demonstration has one draft
        yield "k", f"K must be between {K_MIN} and {K_MAX}, got {k}"
    if kind == SetKind.demonstration and comparing:
        yield "compare_version", "a demonstration set has one draft per task, from one policy"
    if not 1 <= overlap <= OVERLAP_MAX:
        yield "overlap", f"overlap must be between 1 and {OVERLAP_MAX}, got {overlap}"


def sampling_problems(sampling: dict[str, Any]) -> Iterator[Complaint]:
    """SAMPLE's checks; `sampling` gets the checked values ("0.8" becomes 0.8)."""
    try:
        sampling.update(SAMPLE.validate(sampling))
    except ParamsError as exc:
        for error in exc.errors:
            fld, _, message = error.partition(": ")
            yield fld, message


def version_problems(session: Session, policy_id: int | None, compare_id: int | None) -> Iterator[Complaint]:
    for fld, vid in (("policy_version", policy_id), ("compare_version", compare_id)):
        if vid is not None and policies.get_policy(session=session, version_id=vid) is None:
            yield fld, f"no policy version with id {vid}"
    if compare_id is not None and compare_id == policy_id:
        yield "compare_version", "must differ from the policy version"


def flag_problems(flags: list[str]) -> Iterator[Complaint]:
    if len(flags) > MAX_FLAGS:
        yield "flags", f"at most {MAX_FLAGS} flags, got {len(flags)}"
    for flag in flags:
        if has_nul(flag):
            yield "flags", "a flag contains a NUL character (\\u0000)"
        if len(flag) > 200:
            yield "flags", f"a flag of {len(flag)} characters; at most 200"
    if len(set(flags)) != len(flags):
        yield "flags", "the same flag is listed twice"


def import_prompt_set(
    *,
    session: Session,
    settings: Settings,
    name: str,
    filename: str,
    data: bytes,
    fmt: str | None = None,
    kind: str = SetKind.ranking,
    k: int = 4,
    overlap: int = 1,
    sampling: dict[str, Any] | None = None,
    policy_version_id: int | None = None,
    compare_version_id: int | None = None,
    flags: list[str] | None = None,
    created_by_id: int | None = None,
    enqueue: bool = True,
) -> PromptSet:
    """Validate everything, then store the set, its prompts and a `sample` job; or raise
    ImportRejected having stored nothing. A demonstration set's tasks are open at once (one per
    prompt; labelers write the reply), and its `sample` job writes one draft per task beside them."""
    params = {**SAMPLE.defaults, **(sampling or {})}
    flag_set = [f.strip() for f in (flags or []) if f.strip()] or list(DEFAULT_FLAGS)
    complaints = [
        *name_problems(session, name),
        *shape_problems(kind, k, overlap, compare_version_id is not None),
        *sampling_problems(params),
        *version_problems(session, policy_version_id, compare_version_id),
        *flag_problems(flag_set),
    ]
    problems = [Problem(filename, None, fld, message) for fld, message in complaints]
    version = None
    if not any(p.field in ("policy_version", "compare_version") for p in problems):
        version = (
            policies.get_policy(session=session, version_id=policy_version_id)
            if policy_version_id is not None
            else policies.default_policy(session=session, settings=settings)
        )
    counter, counted_with = token_counter(version)
    positions, new_tokens = context_positions(version), params.get("max_new_tokens")
    if positions is not None and isinstance(new_tokens, int) and 0 < positions <= new_tokens:
        problems.append(
            Problem(
                filename,
                None,
                "max_new_tokens",
                f"must be below the {positions} tokens the policy sees at once, got {new_tokens}",
            )
        )
    max_tokens, limit_name = token_limit(settings=settings, version=version, sampling=params)
    parsed = parse_prompt_file(
        filename=filename,
        data=data,
        fmt=fmt,
        max_bytes=settings.max_upload_bytes,
        max_tokens=max_tokens,
        count_tokens=counter,
        limit_name=limit_name,
    )
    problems += parsed.problems
    if problems:
        raise ImportRejected(problems, truncated=parsed.truncated)
    assert version is not None
    demonstration = kind == SetKind.demonstration
    prompt_set = PromptSet(
        name=name.strip(),
        kind=kind,
        k=1 if demonstration else k,
        overlap=overlap,
        sampling=params,
        policy_version_id=version.id,
        compare_version_id=compare_version_id,
        flags=flag_set,
        status=SetStatus.sampling if enqueue and not demonstration else SetStatus.active,
        source_filename=filename.replace("\x00", "")[:500],
        created_by_id=created_by_id,
        report={
            "rows": parsed.rows,
            "imported": len(parsed.prompts),
            "duplicates": parsed.duplicates,
            "duplicate_lines": parsed.duplicate_lines,
            "tokens_counted_with": counted_with,
        },
    )
    session.add(prompt_set)
    session.flush()
    session.add_all(
        Prompt(
            prompt_set_id=prompt_set.id,
            messages=p.messages,
            text=p.text,
            text_hash=p.hash,
            meta=p.meta,
            source_line=p.line,
        )
        for p in parsed.prompts
    )
    session.flush()
    if demonstration:
        open_demonstration_tasks(session=session, prompt_set=prompt_set)
        refresh_statistics(session, "task")  # a whole file of open tasks, not one added prompt
    if enqueue:
        start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
    return prompt_set
