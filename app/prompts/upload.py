"""An upload into a new prompt set: every option and every prompt checked, then the set, its
prompts and its sampling stored whole, or nothing stored and ImportRejected says where and why."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
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
SAMPLING_DEFAULTS: dict[str, Any] = SAMPLE.defaults


class ImportRejected(Invalid):
    """The upload was refused; `problems` says where and why. Nothing was stored."""

    def __init__(self, problems: list[Problem], truncated: bool = False) -> None:
        first = problems[0]
        super().__init__(first.field, first.message, file=first.file, line=first.line)
        self.problems, self.truncated = problems, truncated
        self.args = ("; ".join(str(p) for p in problems[:3]),)


def check_options(
    *,
    session: Session,
    filename: str,
    name: str,
    kind: str = SetKind.ranking,
    k: int,
    overlap: int,
    sampling: dict[str, Any],
    policy_version_id: int | None,
    compare_version_id: int | None,
) -> list[Problem]:
    problems: list[Problem] = []

    def bad(fld: str, message: str) -> None:
        problems.append(Problem(filename, None, fld, message))

    if not name.strip():
        bad("name", "a prompt set needs a name")
    elif len(name) > 200:
        bad("name", "at most 200 characters")
    elif has_nul(name):  # PostgreSQL cannot even look such a name up
        bad("name", "contains a NUL character (\\u0000)")
    elif session.scalar(select(PromptSet.id).where(PromptSet.name == name.strip())) is not None:
        bad("name", f"a prompt set named {name.strip()!r} already exists; choose another name")
    if kind not in SetKind.__members__:
        bad("kind", f"must be {' or '.join(SetKind)}, got {kind!r}")
    if kind != SetKind.demonstration and not K_MIN <= k <= K_MAX:  # a demonstration has one draft
        bad("k", f"K must be between {K_MIN} and {K_MAX}, got {k}")
    if kind == SetKind.demonstration and compare_version_id is not None:
        bad("compare_version", "a demonstration set has one draft per task, from one policy")
    if not 1 <= overlap <= OVERLAP_MAX:
        bad("overlap", f"overlap must be between 1 and {OVERLAP_MAX}, got {overlap}")
    try:
        sampling.update(SAMPLE.validate(sampling))
    except ParamsError as exc:
        for error in exc.errors:
            bad(*error.split(": ", 1))
    for fld, vid in (("policy_version", policy_version_id), ("compare_version", compare_version_id)):
        if vid is not None and policies.get_policy(session=session, version_id=vid) is None:
            bad(fld, f"no policy version with id {vid}")
    if compare_version_id is not None and compare_version_id == policy_version_id:
        bad("compare_version", "must differ from the policy version")
    return problems


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
    params = {**SAMPLING_DEFAULTS, **(sampling or {})}
    problems = check_options(
        session=session,
        filename=filename,
        name=name,
        kind=kind,
        k=k,
        overlap=overlap,
        sampling=params,
        policy_version_id=policy_version_id,
        compare_version_id=compare_version_id,
    )
    flag_set = [f.strip() for f in (flags or []) if f.strip()] or list(DEFAULT_FLAGS)
    if len(flag_set) > MAX_FLAGS:
        problems.append(Problem(filename, None, "flags", f"at most {MAX_FLAGS} flags, got {len(flag_set)}"))
    for flag in flag_set:
        if has_nul(flag):
            problems.append(Problem(filename, None, "flags", "a flag contains a NUL character (\\u0000)"))
        if len(flag) > 200:
            problems.append(
                Problem(filename, None, "flags", f"a flag of {len(flag)} characters; at most 200")
            )
    if len(set(flag_set)) != len(flag_set):
        problems.append(Problem(filename, None, "flags", "the same flag is listed twice"))
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
    if enqueue:
        start_sampling(session=session, prompt_set=prompt_set, created_by_id=created_by_id)
    return prompt_set
