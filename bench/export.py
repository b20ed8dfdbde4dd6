"""Export throughput and memory: 100,000 and 1,000,000 pairs, JSON Lines and Parquet.

Builds a scratch database (a SQLite file by default, or a scratch PostgreSQL database with
--pg ADMIN_URL) holding two prompt sets of K=9 rankings: one with ~100k pairs, one with ~1M
(36 pairs per annotation). Each export then runs in a fresh Python process, so its peak RSS
(getrusage) is the honest memory figure of that export alone. Prints pairs per second and
peak memory per run, and checks the issue's targets: >= 100,000 pairs/s, and peak memory for
1M pairs within 1.2x of that for 100k.

    python bench/export.py                       # SQLite in a temporary folder
    python bench/export.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python bench/export.py --sizes 100000 --formats trl   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K = 9
PAIRS_PER_ANNOTATION = K * (K - 1) // 2
_SENTENCE = (
    "the model answer explains a careful step by step reason with clear words and a short "
    "example that a labeler reads before ranking every output from best to worst"
)
WORDS = _SENTENCE.split()


def build(url: str, sizes: list[int]) -> dict[int, int]:
    """Prompt sets named pairs-<size>, written 2,000 rankings at a time by the writer of
    `preferences import` (app.imports.writing); returns size -> prompt set id."""
    from sqlalchemy import insert

    from app import migrate
    from app.auth.models import User
    from app.chat import from_text
    from app.db import make_sessionmaker, utcnow
    from app.imports.parsing import Unit
    from app.imports.writing import group_tasks, write_annotations, write_completions, write_tasks
    from app.prompts.models import PromptSet
    from app.runs.models import ModelVersion

    migrate.upgrade(url)
    rng = random.Random(0)
    now = utcnow()

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    out = {}
    with make_sessionmaker(url)() as session, session.begin():
        users = {
            f"bench-{i}": session.execute(
                insert(User).returning(User.id),
                {"username": f"bench-{i}", "password_hash": "!", "role": "labeler", "created_at": now},
            ).scalar_one()
            for i in range(20)
        }
        versions: dict[str | None, int] = {
            f"bench-v{i}": session.execute(
                insert(ModelVersion).returning(ModelVersion.id),
                {"kind": "policy", "name": f"bench-v{i}", "source": "bench", "config": {}, "metrics": {}},
            ).scalar_one()
            for i in (1, 2)
        }
        comp_texts = [text(40) for _ in range(500)]  # ~250 characters each, reused
        for size in sizes:
            n_ann = -(-size // PAIRS_PER_ANNOTATION)
            ps = PromptSet(
                name=f"pairs-{size}-{uuid.uuid4().hex[:4]}", k=K, overlap=1, sampling={}, flags=[], report={}
            )
            session.add(ps)
            session.flush()
            out[size] = ps.id
            t0 = time.perf_counter()
            for start in range(0, n_ann, 2000):
                units = []
                for line in range(start, min(n_ann, start + 2000)):
                    ranks = list(range(1, K + 1))
                    rng.shuffle(ranks)
                    units.append(
                        Unit(
                            line=line,
                            group=None,
                            messages=from_text(f"Prompt {ps.id}-{line}: {text(15)}"),
                            completions=[
                                (None, rng.choice(comp_texts), f"bench-v{j % 2 + 1}") for j in range(K)
                            ],
                            ranks=ranks,
                            ratings=[8 - min(7, r) for r in ranks],
                            labeler=f"bench-{line % len(users)}",
                            time_spent_ms=rng.randint(5_000, 120_000),
                        )
                    )
                tasks, comps_of = group_tasks(units)
                keys = list(tasks)
                task_ids = write_tasks(session, ps, tasks, keys, now)
                comp_id = write_completions(session, keys, task_ids, comps_of, versions, now)
                write_annotations(session, tasks, keys, task_ids, comp_id, users, now)
            print(
                f"built set {ps.id}: {n_ann:,} annotations, {n_ann * PAIRS_PER_ANNOTATION:,} pairs "
                f"in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    return out


def child(url: str, fmt: str, file_type: str, set_id: int, out: str) -> None:
    """One export in this fresh process; prints a JSON line with its figures."""
    from app.db import make_sessionmaker
    from app.exports import service
    from app.exports.filters import Filters
    from app.exports.formats import RowOptions

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ex = service.export(
        session_factory=make_sessionmaker(url),
        fmt=fmt,
        file_type=file_type,
        filters=Filters(prompt_set_ids=[set_id]),
        opts=RowOptions(),
        secret="bench",  # noqa: S106  (pseudonyms only)
    )
    first = None
    with open(out, "wb") as f:
        for chunk in ex.stream:
            if first is None:
                first = time.perf_counter() - t0
            f.write(chunk)
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    peak_kb = ru.ru_maxrss
    print(
        json.dumps(
            {
                "pairs": ex.counts.pairs,
                "rows": ex.counts.rows,
                "seconds": seconds,
                "cpu_s": cpu,
                "first_bytes_s": first,
                "peak_mb": peak_kb / 1024,
                "bytes": os.path.getsize(out),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", help="PostgreSQL admin URL: make a scratch database there instead of SQLite")
    ap.add_argument("--sizes", default="100000,1000000", help="pairs per run, comma separated")
    ap.add_argument("--formats", default="comparisons,trl", help="export formats, comma separated")
    ap.add_argument("--file-types", default="jsonl,parquet", help="file types, comma separated")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        url, fmt, file_type, set_id, out = args.child
        child(url, fmt, file_type, int(set_id), out)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ranklab-bench-"))
    dropper = None
    if args.pg:
        from sqlalchemy import create_engine, text

        name = f"ranklab_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = args.pg.rsplit("/", 1)[0] + f"/{name}"

        def dropper() -> None:
            from app.db import get_engine

            get_engine(url).dispose()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    try:
        print(
            f"database: {url.split('@')[-1]}; load average now {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} CPUs (wall-clock rates suffer on a busy machine; pairs per CPU "
            "second do not)",
            flush=True,
        )
        sets = build(url, sizes)
        results: dict[tuple[str, str, int], dict] = {}
        print(
            f"{'format':<12} {'file':<8} {'pairs':>10} {'seconds':>8} {'pairs/s':>10} "
            f"{'pairs/cpu-s':>11} {'first bytes':>11} {'peak MB':>8} {'MB out':>7}"
        )
        for fmt in args.formats.split(","):
            for ft in args.file_types.split(","):
                for size in sizes:
                    out = tmp / f"out.{ft}"
                    proc = subprocess.run(
                        [sys.executable, __file__, "--child", url, fmt, ft, str(sets[size]), str(out)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                    )
                    if proc.returncode:
                        print(proc.stderr, file=sys.stderr)
                        raise SystemExit(proc.returncode)
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    results[(fmt, ft, size)] = r
                    print(
                        f"{fmt:<12} {ft:<8} {r['pairs']:>10,} {r['seconds']:>8.2f} "
                        f"{r['pairs'] / r['seconds']:>10,.0f} {r['pairs'] / r['cpu_s']:>11,.0f} "
                        f"{r['first_bytes_s']:>10.2f}s "
                        f"{r['peak_mb']:>8.1f} {r['bytes'] / 2**20:>7.1f}",
                        flush=True,
                    )
        if len(sizes) >= 2:
            small, large = min(sizes), max(sizes)
            for fmt in args.formats.split(","):
                for ft in args.file_types.split(","):
                    a, b = results[(fmt, ft, small)], results[(fmt, ft, large)]
                    rate = min(x["pairs"] / x["seconds"] for x in (a, b))
                    cpu_rate = min(x["pairs"] / x["cpu_s"] for x in (a, b))
                    ratio = b["peak_mb"] / a["peak_mb"]
                    ok = rate >= 100_000 and ratio <= 1.2
                    print(
                        f"{fmt} {ft}: slowest {rate:,.0f} pairs/s wall, {cpu_rate:,.0f} pairs per CPU "
                        f"second (target 100,000), peak memory "
                        f"{large:,} vs {small:,} pairs: {ratio:.2f}x (target <= 1.2x) -> "
                        f"{'OK' if ok else 'SHORT'}"
                    )
    finally:
        if dropper:
            dropper()
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
