"""Load test of the labeling JSON API on PostgreSQL, with an audit of what was stored.

Starts the real server (uvicorn in a subprocess) on a scratch PostgreSQL database it creates and
migrates, seeds labelers with API tokens and tasks, then runs N simulated labelers (httpcore, async)
that loop GET /api/v1/tasks/next -> POST /api/v1/assignments/{id}/annotation until the time or
the tasks run out. Prints per-endpoint latency percentiles, annotations per second, and an audit
from the database: lost (acknowledged but absent), duplicated, over-assigned — all must be 0.

    python bench/labeling_load.py --labelers 100 --seconds 30   # each pauses ~5 s per task
    python bench/labeling_load.py --labelers 100 --think 0      # no pause between requests: saturation
    python bench/labeling_load.py --labelers 20 --think 0.2 --kill-connections 5   # a failover, 5 times
    python bench/labeling_load.py --labelers 100 --think 0 --combined   # submit answers with the next task
    python bench/labeling_load.py --labelers 10 50 100 --think 0 --seconds 20 --repeat 3   # medians

A 503 (the server's answer when its database is exhausted or reconnecting) is retried after its
Retry-After, as the labeling page does; it is counted by kind with the other errors.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import httpcore
import httpx
from sqlalchemy import create_engine, insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.auth import security  # noqa: E402
from app.auth.models import ApiToken, User  # noqa: E402
from app.labeling.models import Completion, Task  # noqa: E402
from app.prompts.models import DEFAULT_FLAGS, Prompt, PromptSet  # noqa: E402

FLAG = DEFAULT_FLAGS[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(url: str, *, labelers: int, tasks: int, k: int, overlap: int) -> list[str]:
    """Users with one token each, one active prompt set, `tasks` open tasks of K completions."""
    engine = create_engine(url)
    password_hash = security.hash_password("bench-password-123")
    tokens: list[str] = []
    with engine.begin() as conn:
        user_ids = (
            conn.execute(
                insert(User).returning(User.id),
                [
                    {
                        "username": f"bench{i}",
                        "password_hash": password_hash,
                        "role": "labeler",
                        "is_active": True,
                        "is_system": False,
                    }
                    for i in range(labelers)
                ],
            )
            .scalars()
            .all()
        )
        rows = []
        for uid in user_ids:
            raw = security.new_token(security.TOKEN_PREFIX)
            tokens.append(raw)
            rows.append(
                {"user_id": uid, "name": "bench", "token_hash": security.sha256(raw), "prefix": raw[:10]}
            )
        conn.execute(insert(ApiToken), rows)
        set_id = conn.execute(
            insert(PromptSet).returning(PromptSet.id),
            {
                "name": "bench",
                "k": k,
                "overlap": overlap,
                "status": "active",
                "flags": DEFAULT_FLAGS,
                "sampling": {},
                "report": {},
            },
        ).scalar_one()
        prompt_ids = (
            conn.execute(
                insert(Prompt).returning(Prompt.id, sort_by_parameter_order=True),
                [
                    {
                        "prompt_set_id": set_id,
                        "messages": [
                            {"role": "user", "content": f"Bench prompt {i}: explain photosynthesis briefly."}
                        ],
                        "text": f"Bench prompt {i}: explain photosynthesis briefly.",
                        "text_hash": security.sha256(f"bench {i}"),
                        "meta": {},
                    }
                    for i in range(tasks)
                ],
            )
            .scalars()
            .all()
        )
        task_ids = (
            conn.execute(
                insert(Task).returning(Task.id, sort_by_parameter_order=True),
                [
                    {"prompt_id": pid, "prompt_set_id": set_id, "status": "open", "label_count": 0}
                    for pid in prompt_ids
                ],
            )
            .scalars()
            .all()
        )
        conn.execute(
            insert(Completion),
            [
                {
                    "task_id": tid,
                    "text": f"Completion {j} of task {tid}. " * 8,
                    "params": {},
                    "finish_reason": "stop",
                    "is_duplicate": False,
                }
                for tid in task_ids
                for j in range(k)
            ],
        )
    # Statistics, as autovacuum gathers them within a minute of a real upload: without them the
    # planner takes the freshly seeded queue for a few rows and reads every open task of the set
    # on each claim, then sorts them (8,535 buffers and 13.8 ms where the ordered walk needs 226
    # and 0.45 ms, EXPLAIN ANALYZE on this machine), which measures a state no server stays in.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return tokens


def cpu_seconds(server_pid: int, database: str) -> tuple[float, float]:
    """CPU time used so far by the uvicorn processes, and by PostgreSQL backends of `database`."""
    import psutil

    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    root = psutil.Process(server_pid)
    app = used(root) + sum(used(c) for c in root.children(recursive=True))
    db = sum(
        used(p) for p in psutil.process_iter(["cmdline"]) if database in " ".join(p.info.get("cmdline") or [])
    )
    return app, db


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


class Answer(NamedTuple):
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


# What a dropped or refused connection raises; counted by kind, never retried.
DROPPED = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException)


class Browser:
    """One labeler's keep-alive HTTP/1.1 connection. httpcore is the transport under httpx: the
    same requests on the same connections, at about 60% of httpx's client CPU per request (its
    URL, header and cookie handling is skipped), which on a 2-core machine the server gets back.
    Idle connections are dropped here (2 s) before uvicorn drops them (5 s): otherwise a request
    sent on a connection the server is closing that instant is a ReadError of the bench's own
    making, not the server's."""

    TIMEOUT = {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0}

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url
        self.pool = httpcore.AsyncConnectionPool(max_connections=1, keepalive_expiry=2.0)
        self.headers = [(b"authorization", f"Bearer {token}".encode())]

    async def request(self, method: str, path: str, body: Any = None) -> Answer:
        headers, content = self.headers, b""
        if body is not None:
            content = json.dumps(body).encode()
            headers = [*headers, (b"content-type", b"application/json")]
        r = await self.pool.request(
            method, self.base + path, headers=headers, content=content, extensions={"timeout": self.TIMEOUT}
        )
        return Answer(r.status, {k.decode().lower(): v.decode() for k, v in r.headers}, r.content)


async def labeler(
    client: Browser,
    token: str,
    deadline: float,
    think: float,
    lat: dict[str, list[float]],
    errors: list[str],
    acked: list[int],
    combined: bool = False,
) -> None:
    rng = random.Random(token)
    await asyncio.sleep(rng.uniform(0, think))  # labelers do not all start in the same millisecond
    carried: dict | None = None  # --combined: the next task, carried by the last submission's answer
    submit_url = "/api/v1/assignments/{}/annotation" + ("?next=true" if combined else "")
    while time.monotonic() < deadline:
        if carried is not None:
            task, carried = carried, None
        else:
            t0 = time.perf_counter()
            try:
                r = await client.request("GET", "/api/v1/tasks/next")
            except DROPPED as e:
                errors.append(f"next: {type(e).__name__}")
                continue
            lat["GET /api/v1/tasks/next"].append((time.perf_counter() - t0) * 1000)
            if r.status_code == 204:
                return
            if r.status_code != 200:
                errors.append(f"next: {r.status_code} {r.text[:120]}")
                if r.status_code == 503:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")) * rng.uniform(0.1, 0.5))
                continue
            task = r.json()
        if think:
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))
        ids = [c["id"] for c in task["completions"]]
        if rng.random() < 0.05:
            body: dict = {"skip": "unclear"}
        else:
            order = ids[:]
            rng.shuffle(order)
            ranks = {str(cid): n + 1 for n, cid in enumerate(order)}
            if len(order) > 2 and rng.random() < 0.3:
                ranks[str(order[2])] = ranks[str(order[1])]  # a tie, in competition form
            body = {
                "ranks": ranks,
                "ratings": {c: max(1, 7 - r) for c, r in ranks.items()},
                "flags": {str(order[-1]): [FLAG]},
                "notes": "",
                "time_spent_ms": 1000,
            }
        for _attempt in range(30):  # a 503 is safe to retry: submission is idempotent
            t0 = time.perf_counter()
            try:
                r = await client.request("POST", submit_url.format(task["assignment_id"]), body)
            except DROPPED as e:
                errors.append(f"annotation: {type(e).__name__}")
                break
            lat["POST /api/v1/assignments/{id}/annotation"].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 503:
                break
            errors.append(f"annotation: 503 {r.text[:120]}")
            await asyncio.sleep(float(r.headers.get("retry-after", "1")) * rng.uniform(0.1, 0.5))
        if r.status_code != 200:
            if r.status_code != 503:
                errors.append(f"annotation: {r.status_code} {r.text[:120]}")
            continue
        answer = r.json()
        acked.append(int(answer["id"]))
        if combined:
            if answer.get("next") is None:
                return  # nothing left for this labeler
            carried = answer["next"]


def audit(url: str, acked: list[int], overlap: int) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        present = set(conn.execute(text("SELECT id FROM annotation")).scalars().all())
        out = {
            "lost": sum(1 for a in acked if a not in present),
            "duplicated": conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT task_id, user_id FROM annotation "
                    "GROUP BY task_id, user_id HAVING count(*) > 1) d"
                )
            ).scalar_one(),
            "over-assigned": conn.execute(
                text(
                    "SELECT count(*) FROM task t WHERE (SELECT count(*) FROM annotation a WHERE "
                    "a.task_id = t.id AND a.skip_reason IS NULL) > :o OR t.label_count > :o"
                ),
                {"o": overlap},
            ).scalar_one(),
            "label_count mismatch": conn.execute(
                text(
                    "SELECT count(*) FROM task t WHERE t.label_count <> (SELECT count(*) FROM annotation a "
                    "WHERE a.task_id = t.id AND a.skip_reason IS NULL)"
                )
            ).scalar_one(),
            "annotations stored": len(present),
        }
    engine.dispose()
    return out


def kill_connections(
    admin_url: str, database: str, times: int, stop: threading.Event, log: list[int]
) -> None:
    """Terminate the server's connections to `database`, `times` times 4 s apart (the first after 2 s)."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        for i in range(times):
            if stop.wait(2.0 if i == 0 else 4.0):
                return
            with engine.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                ).all()
            log.append(len(killed))
    finally:
        engine.dispose()


def kind(error: str) -> str:
    """`next: 503 {...}` -> `next 503`; `annotation: ReadError` -> `annotation ReadError`."""
    endpoint, _, rest = error.partition(": ")
    return f"{endpoint} {rest.split(' ', 1)[0]}"


async def run(
    args: argparse.Namespace, base_url: str, tokens: list[str]
) -> tuple[dict, list, list, float, float]:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    acked: list[int] = []
    # Each labeler is its own browser: its own client and keep-alive connection, so the client's
    # cost per request does not grow with the number of labelers (one shared pool scans all its
    # connections on every request).
    clients = [Browser(base_url, t) for t in tokens]
    try:
        await clients[0].request("GET", "/healthz")
        # The client's own garbage collector is paused for the run: one full collection of its
        # heap (the seeding's imports and rows) stalled every simulated labeler for 100 ms, which
        # the latencies would otherwise have counted as the server's. A run's garbage is a few MB.
        gc.collect()
        gc.freeze()
        gc.disable()
        start, cpu0 = time.monotonic(), time.process_time()
        deadline = start + args.seconds
        await asyncio.gather(
            *(
                labeler(c, t, deadline, args.think, lat, errors, acked, args.combined)
                for c, t in zip(clients, tokens, strict=True)
            )
        )
        elapsed, client_cpu = time.monotonic() - start, time.process_time() - cpu0
    finally:
        gc.enable()
        gc.unfreeze()
        await asyncio.gather(*(c.pool.aclose() for c in clients))
    return lat, errors, acked, elapsed, client_cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--labelers", type=int, nargs="+", default=[100], help="one run per number given: 10 50 100"
    )
    p.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--overlap", type=int, default=3)
    p.add_argument(
        "--think",
        type=float,
        default=5.0,
        help="mean seconds a simulated labeler reads before submitting; real labelers take "
        "30 s or more per task (0: no pause, i.e. saturation)",
    )
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "RANKLAB_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument(
        "--kill-connections",
        type=int,
        default=0,
        metavar="N",
        help="terminate the server's PostgreSQL connections N times, 4 s apart, during the run",
    )
    p.add_argument(
        "--combined",
        action="store_true",
        help="submit with ?next=true and take the next task from that answer: one request per task "
        "(the default is GET next, then POST the annotation: two)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="R rounds, each running every number of labelers once (a fresh database and server "
        "each time), then a table of medians: these machines vary from minute to minute",
    )
    args = p.parse_args()
    runs: dict[int, list[Run]] = defaultdict(list)
    # Rounds, not blocks: each round runs every size once, so a machine that speeds up or slows
    # down during the hour weighs on all sizes alike, and each round's rates compare directly.
    for _ in range(args.repeat):
        for labelers in args.labelers:
            runs[labelers].append(one_run(args, labelers))
            print()
    if len(args.labelers) > 1 or args.repeat > 1:
        summary(runs)
    return 0 if all(r.ok for rs in runs.values() for r in rs) else 1


class Run(NamedTuple):
    rate: float  # annotations/s
    p50: float
    p99: float
    errors: int
    ok: bool  # no errors (or only retried 503s under --kill-connections) and a clean audit


def summary(runs: dict[int, list[Run]]) -> None:
    """Medians over the rounds, and each rate against the rate at the fewest labelers in the same
    round (flat: 100%): the median of those ratios, since the machine's speed drifts between
    rounds more than ranklab's rate changes with labelers."""
    fewest = runs[min(runs)]
    print(f"medians over {len(fewest)} round(s):")
    print("labelers  annotations/s  of the rate at the fewest  p50 (ms)  p99 (ms)  errors  all passed")
    for labelers, rs in runs.items():
        rate = statistics.median(r.rate for r in rs)
        flat = statistics.median(r.rate / f.rate for r, f in zip(rs, fewest, strict=True))
        p50, p99 = statistics.median(r.p50 for r in rs), statistics.median(r.p99 for r in rs)
        print(
            f"{labelers:>8}  {rate:>13.1f}  {flat:>24.0%}  {p50:>8.1f}"
            f"  {p99:>8.1f}  {sum(r.errors for r in rs):>6}"
            f"  {'yes' if all(r.ok for r in rs) else 'NO'}"
        )


def one_run(args: argparse.Namespace, labelers: int) -> Run:
    name = f"ranklab_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    server = None
    try:
        migrate.upgrade(url)
        tokens = seed(url, labelers=labelers, tasks=args.tasks, k=args.k, overlap=args.overlap)
        port = free_port()
        env = {**os.environ, "RANKLAB_DATABASE_URL": url, "RANKLAB_ENV": "development"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not start")
        cpu_before = cpu_seconds(server.pid, name)
        stop, kills = threading.Event(), []
        killer = threading.Thread(
            target=kill_connections, args=(args.pg_admin_url, name, args.kill_connections, stop, kills)
        )
        killer.start()
        lat, errors, acked, elapsed, client_cpu = asyncio.run(run(args, base, tokens))
        stop.set()
        killer.join()
        cpu_after = cpu_seconds(server.pid, name)
        print(
            f"labelers={labelers} workers={args.workers} think={args.think}s k={args.k} "
            f"overlap={args.overlap} tasks={args.tasks} elapsed={elapsed:.1f}s"
            + (" combined (submit carries next)" if args.combined else "")
        )
        for endpoint, values in lat.items():
            print(
                f"{endpoint:<45} n={len(values):>6}  p50={pct(values, 50):6.1f} ms  "
                f"p95={pct(values, 95):6.1f} ms  p99={pct(values, 99):6.1f} ms  "
                f"max={max(values):6.1f} ms"
            )
        print(f"annotations/s={len(acked) / elapsed:.1f}  acknowledged={len(acked)}  errors={len(errors)}")
        n_requests = sum(len(v) for v in lat.values()) or 1
        app_ms = (cpu_after[0] - cpu_before[0]) * 1000 / n_requests
        db_ms = (cpu_after[1] - cpu_before[1]) * 1000 / n_requests
        print(
            f"CPU per request: server {app_ms:.1f} ms + PostgreSQL {db_ms:.1f} ms"
            f" + this client {client_cpu * 1000 / n_requests:.1f} ms"
            f"  (machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        by_kind = Counter(kind(e) for e in errors)
        print("errors by kind: " + (", ".join(f"{k}={v}" for k, v in sorted(by_kind.items())) or "none"))
        if args.kill_connections:
            print(f"connections killed: {len(kills)} times, {sum(kills)} connections")
        for e in sorted(set(errors))[:5]:
            print("  error:", e)
        result = audit(url, acked, args.overlap)
        print("audit: " + "  ".join(f"{k}={v}" for k, v in result.items()))
        all_lat = [v for values in lat.values() for v in values]
        audit_clean = (
            result["lost"] == result["duplicated"] == result["over-assigned"] == 0
            and result["label_count mismatch"] == 0
        )
        hard = sum(v for k, v in by_kind.items() if not k.endswith(" 503"))  # 500s, drops, others
        # Killing connections must cost only 503s (retried); without it there must be no errors.
        ok = audit_clean and (hard == 0 if args.kill_connections else not errors)
        print(
            f"overall p99={pct(all_lat, 99):.1f} ms  ->  {'PASS' if ok else 'FAIL'}"
            " (no errors, or only retried 503s with --kill-connections; audit all 0)"
        )
        return Run(len(acked) / elapsed, pct(all_lat, 50), pct(all_lat, 99), len(errors), ok)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
