"""Every format and filter on a hand-made dataset (tests/exports/data.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app import ranking
from app.exports import formats, service
from app.exports.filters import ExportError, Filters, pseudonym, resolve_labelers
from app.exports.formats import RowOptions
from app.exports.records import iter_records
from tests.exports.data import SECRET, build, read_rows, run_export

FILE_TYPES = ["jsonl", "jsonl.gz", "parquet"]


class TestFormats:
    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_comparisons_every_pair_ties_marked(self, session: Session, file_type: str) -> None:
        w = build(session)
        data, man = run_export(session, "comparisons", file_type)
        rows = read_rows(data, file_type)
        # a1: C(4,2)=6 with 1 tie; b1: 6; a2: 6; b3: C(3,2)=3 with 1 tie. b2 was skipped.
        assert len(rows) == 21 and sum(r["tie"] for r in rows) == 2
        assert man["counts"]["pairs"] == 19 and man["counts"]["ties"] == 2
        assert list(rows[0]) == formats.columns("comparisons", RowOptions())
        a1 = [r for r in rows if r["annotation_id"] == w.anns["a1"].id]
        c = [x.id for x in w.t1.completions]
        tie = [r for r in a1 if r["tie"]]
        assert [(r["chosen_completion_id"], r["rejected_completion_id"], r["rank_gap"]) for r in tie] == [
            (c[0], c[1], 0)
        ]
        best = next(r for r in a1 if (r["chosen_completion_id"], r["rejected_completion_id"]) == (c[0], c[3]))
        assert best["rank_gap"] == 2 and best["rating_diff"] == 4 and best["chosen_rank"] == 1
        assert best["chosen_policy"] == "policy-v1" and best["prompt"] == "Write a haiku about rain."
        assert best["chosen"] == w.t1.completions[0].text and best["task_id"] == w.t1.id
        assert best["labeler"] == pseudonym(w.alice.id, SECRET) != "alice"
        assert best["chosen_position"] == 0 and best["rejected_position"] == 3
        assert best["created_at"].startswith(str(w.anns["a1"].created_at.year))

    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_trl_drops_ties_and_has_exactly_trl_columns(self, session: Session, file_type: str) -> None:
        w = build(session)
        rows = read_rows(run_export(session, "trl", file_type)[0], file_type)
        assert len(rows) == 19
        assert all(list(r) == ["prompt", "chosen", "rejected"] for r in rows)
        assert all(isinstance(r[k], str) for r in rows for k in r)
        texts = [c.text for c in w.t2.completions]  # alice ranked t2 in reverse: last is best
        assert {"prompt": "Explain gravity.", "chosen": texts[3], "rejected": texts[0]} in rows
        with_margin = read_rows(
            run_export(session, "trl", file_type, opts=RowOptions(margin="rank"))[0], file_type
        )
        assert {
            "prompt": "Explain gravity.",
            "chosen": texts[3],
            "rejected": texts[0],
            "margin": 3.0,
        } in with_margin

    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_trl_conversational(self, session: Session, file_type: str) -> None:
        build(session)
        rows = read_rows(
            run_export(session, "trl", file_type, opts=RowOptions(conversational=True))[0], file_type
        )
        r = rows[0]
        assert r["prompt"] == [{"role": "user", "content": "Write a haiku about rain."}]
        assert r["chosen"][0]["role"] == "assistant" and isinstance(r["chosen"][0]["content"], str)
        assert list(r) == ["prompt", "chosen", "rejected"]

    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_rankings(self, session: Session, file_type: str) -> None:
        w = build(session)
        rows = read_rows(run_export(session, "rankings", file_type)[0], file_type)
        assert [r["annotation_id"] for r in rows] == [w.anns[k].id for k in ("a1", "b1", "a2", "b3")]
        a1 = rows[0]
        assert [c["rank"] for c in a1["completions"]] == [1, 1, 2, 3]
        assert [c["rating"] for c in a1["completions"]] == [6, 6, 4, 2]
        assert a1["notes"] == "close call" and a1["time_spent_ms"] == 30000
        assert rows[2]["completions"][0]["flags"] == ["hallucination (makes up information)"]
        skipped = read_rows(
            run_export(session, "rankings", file_type, Filters(include_skipped=True))[0], file_type
        )
        assert [r["skip_reason"] for r in skipped].count("unclear") == 1 and len(skipped) == 5

    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_groups_one_row_per_task_with_every_ranking(self, session: Session, file_type: str) -> None:
        w = build(session)
        rows = read_rows(run_export(session, "groups", file_type)[0], file_type)
        assert [r["task_id"] for r in rows] == [w.t1.id, w.t2.id, w.t3.id]
        t1 = rows[0]
        assert [c["completion_id"] for c in t1["completions"]] == [c.id for c in w.t1.completions]
        assert [r["ranks"] for r in t1["rankings"]] == [[1, 1, 2, 3], [1, 2, 3, 4]]
        assert len(rows[1]["rankings"]) == 1  # bob skipped t2

    def test_real_names_only_when_asked(self, session: Session) -> None:
        build(session)
        rows = read_rows(run_export(session, "rankings", real_names=True)[0], "jsonl")
        assert {r["labeler"] for r in rows} == {"alice", "bob"}


class TestFilters:
    def _ids(self, session: Session, filters: Filters) -> list[int]:
        return [
            r["annotation_id"]
            for r in read_rows(run_export(session, "rankings", filters=filters)[0], "jsonl")
        ]

    def test_each_filter(self, session: Session) -> None:
        w = build(session)
        a = {k: v.id for k, v in w.anns.items()}
        assert self._ids(session, Filters(prompt_set_ids=[w.set_b.id])) == [a["b3"]]
        assert self._ids(session, Filters(policy_version_ids=[w.v1.id])) == [
            a["a1"],
            a["b1"],
            a["a2"],
        ]
        later = datetime(2029, 1, 1, tzinfo=UTC)
        assert self._ids(session, Filters(since=later)) == [a["b3"]]
        assert self._ids(session, Filters(until=later)) == [a["a1"], a["b1"], a["a2"]]
        assert self._ids(session, Filters(labeler_ids=[w.alice.id])) == [a["a1"], a["a2"]]
        assert self._ids(session, Filters(exclude_flagged=True)) == [a["a1"], a["b1"], a["b3"]]
        assert self._ids(session, Filters(min_labels=2)) == [a["a1"], a["b1"]]
        assert self._ids(session, Filters(include_skipped=True, labeler_ids=[w.bob.id])) == [
            a["b1"],
            a["b2"],
            a["b3"],
        ]

    def test_labelers_by_name_pseudonym_or_id(self, session: Session) -> None:
        w = build(session)
        pseud = pseudonym(w.bob.id, SECRET)
        assert resolve_labelers(session=session, names=["alice", pseud, str(w.bob.id)], secret=SECRET) == [
            w.alice.id,
            w.bob.id,
            w.bob.id,
        ]
        with pytest.raises(ExportError, match="nobody"):
            resolve_labelers(session=session, names=["nobody"], secret=SECRET)

    def test_bad_format_and_split(self, session: Session) -> None:
        with pytest.raises(ExportError, match="format"):
            run_export(session, "csv")
        with pytest.raises(ExportError, match="split"):
            run_export(session, "trl", filters=Filters(split="dev"))
        for bad in ((0.5, 0.5), (0.0, 0.0, 0.0), (1.0, -0.5, 0.5)):
            with pytest.raises(ExportError, match="split fractions"):
                run_export(session, "trl", filters=Filters(split_fractions=bad))  # type: ignore[arg-type]


class TestSplit:
    def test_disjoint_by_prompt_and_stable(self, session: Session) -> None:
        from tests.factories import make_annotation, make_prompt_set, make_task, make_user

        ps = make_prompt_set(session, k=2)
        u1, u2 = make_user(session, username="u1"), make_user(session, username="u2")
        for i in range(40):
            t = make_task(session, prompt_set=ps, prompt=f"prompt {i}")
            make_annotation(session, task=t, user=u1, ranks=[1, 2])
            make_annotation(session, task=t, user=u2, ranks=[2, 1])
        f = Filters(split_fractions=(0.5, 0.25, 0.25))
        rows = read_rows(run_export(session, "comparisons", filters=f)[0], "jsonl")
        by_split: dict[str, set[str]] = {}
        for r in rows:
            by_split.setdefault(r["split"], set()).add(r["prompt"])
        assert set(by_split) == {"train", "validation", "test"}
        names = list(by_split)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert not by_split[a] & by_split[b]
        again = read_rows(run_export(session, "comparisons", filters=f)[0], "jsonl")
        assert [r["split"] for r in again] == [r["split"] for r in rows]
        only = read_rows(
            run_export(
                session, "trl", filters=Filters(split="validation", split_fractions=(0.5, 0.25, 0.25))
            )[0],
            "jsonl",
        )
        assert {r["prompt"] for r in only} == by_split["validation"]
        # the split is a function of the prompt text and seed alone
        assert ranking.split_of("prompt 7", fractions=(0.5, 0.25, 0.25)) == next(
            r["split"] for r in rows if r["prompt"] == "prompt 7"
        )
        assert {ranking.split_of(f"p{i}", seed=1) for i in range(200)} == {"train", "validation", "test"}


class TestManifest:
    @pytest.mark.parametrize("file_type", FILE_TYPES)
    def test_sha256_counts_and_deterministic_bytes(self, session: Session, file_type: str) -> None:
        build(session)
        f = Filters(min_labels=1)
        data, man = run_export(session, "trl", file_type, filters=f)
        assert man["sha256"] == hashlib.sha256(data).hexdigest() and man["bytes"] == len(data)
        assert man["schema_version"] == formats.SCHEMA_VERSION
        assert man["filters"]["min_labels"] == 1 and man["columns"] == ["prompt", "chosen", "rejected"]
        assert man["counts"]["rows"] == 19 and sum(man["counts"]["rows_by_split"].values()) == 19
        assert run_export(session, "trl", file_type, filters=f)[0] == data  # same data, same bytes

    def test_cli_writes_file_and_manifest(self, committed, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        import json

        from click.testing import CliRunner

        from app.cli import cli

        with committed.begin() as s:
            build(s)
        url = str(committed.kw["bind"].url.render_as_string(hide_password=False))
        monkeypatch.setenv("RANKLAB_DATABASE_URL", url)
        from app.config import get_settings

        get_settings.cache_clear()
        try:
            out = tmp_path / "prefs.parquet"
            res = CliRunner().invoke(
                cli, ["export", "trl", "--out", str(out), "--set", "set-a", "--labeler", "alice"]
            )
            assert res.exit_code == 0, res.output
            man = json.loads((tmp_path / "prefs.parquet.manifest.json").read_text())
            assert man["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
            assert man["counts"]["rows"] == 5 + 6 and len(read_rows(out.read_bytes(), "parquet")) == 11
            bad = CliRunner().invoke(cli, ["export", "trl", "--out", str(out), "--set", "nope"])
            assert bad.exit_code != 0 and "nope" in bad.output
            other = tmp_path / "other.jsonl"
            for option, value, said in (
                ("--split-fractions", "1,0", "split fractions"),
                ("--split-fractions", "a,b,c", "--split-fractions"),
                ("--min-labels", "-1", "--min-labels"),
                ("--since", "yesterday", "--since"),
                ("--set", str(10**20), "no prompt set"),  # PostgreSQL: no DataError
                ("--min-labels", str(2**31), "--min-labels"),
            ):
                args = ["export", "trl", "--out", str(other), option, value]
                bad = CliRunner().invoke(cli, args)
                assert bad.exit_code in (1, 2), bad.output
                assert said in bad.output and not list(tmp_path.glob("other*")), bad.output
        finally:
            get_settings.cache_clear()


class TestLoadDataset:
    """`datasets` reads every format and file type; the trl columns are what TRL expects."""

    @pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
    def test_every_format_and_file_type(self, session: Session, tmp_path: Path) -> None:
        from tests.exports.test_sft import build as build_demonstrations

        datasets = pytest.importorskip("datasets")
        build(session)
        build_demonstrations(session)
        for fmt in formats.FORMATS:
            for file_type in FILE_TYPES:
                data, man = run_export(session, fmt, file_type)
                path = tmp_path / f"{fmt}.{file_type}"
                path.write_bytes(data)
                loader = "parquet" if file_type == "parquet" else "json"
                ds = datasets.load_dataset(
                    loader, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
                )
                assert ds.num_rows == man["counts"]["rows"], (fmt, file_type)
                assert ds.column_names == man["columns"], (fmt, file_type)
        for file_type in FILE_TYPES:
            loader = "parquet" if file_type == "parquet" else "json"
            path = tmp_path / f"conv.{file_type}"
            path.write_bytes(run_export(session, "trl", file_type, opts=RowOptions(conversational=True))[0])
            ds = datasets.load_dataset(
                loader, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
            )
            row = ds[0]
            for col in ("prompt", "chosen", "rejected"):
                assert isinstance(row[col], list) and set(row[col][0]) == {"role", "content"}
            assert row["chosen"][0]["role"] == "assistant"
        std = datasets.load_dataset(
            "json", data_files=str(tmp_path / "trl.jsonl"), split="train", cache_dir=str(tmp_path / "cache")
        )
        assert std.features["prompt"].dtype == "string" and std.features["chosen"].dtype == "string"


class TestFastEncoders:
    """The encoders exports run give exactly the rows the readable dict builders describe."""

    def test_same_rows_as_the_dict_builders(self, session: Session) -> None:
        import io
        import json

        import pyarrow.parquet as pq

        from app.exports import encode

        build(session)
        recs = list(iter_records(session=session, filters=Filters(), secret=SECRET))
        cases = [("comparisons", RowOptions())] + [
            ("trl", RowOptions(conversational=c, margin=m))
            for c in (False, True)
            for m in ("none", "rank", "rating")
        ]
        for fmt, opts in cases:
            want = [
                row
                for rec in recs
                for row in (
                    formats.comparison_rows(rec) if fmt == "comparisons" else formats.trl_rows(rec, opts)
                )
            ]
            lines = b"".join(
                (encode.comparison_lines(r) if fmt == "comparisons" else encode.trl_lines(r, opts))[0]
                for r in recs
            )
            got = [json.loads(x) for x in lines.splitlines()]
            assert got == want and [list(g) for g in got] == [list(w) for w in want], (fmt, opts)
            table = encode.ArrowPairs(fmt, opts)
            for r in recs:
                table.add(r)
            buf = io.BytesIO()
            pq.write_table(table.table(), buf)
            assert pq.read_table(io.BytesIO(buf.getvalue())).to_pylist() == want, (fmt, opts)

    def test_first_bytes_leave_before_the_data_is_read(self, session: Session) -> None:
        build(session)
        from tests.exports.data import _same

        ex = service.export(
            session_factory=_same(session),
            fmt="comparisons",
            file_type="jsonl",
            filters=Filters(),
            opts=RowOptions(),
            secret=SECRET,
            batch_annotations=4,
        )
        first = next(iter(ex.stream))
        assert first.count(b"\n") == 6 and ex.counts.annotations == 1  # one annotation read so far
        rest = b"".join(ex.stream)
        assert (first + rest).count(b"\n") == 21


def test_postgres_exports_read_one_snapshot(committed_pg) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with committed_pg() as s:
        service._snapshot(s)
        assert s.execute(text("SHOW transaction_isolation")).scalar() == "repeatable read"
