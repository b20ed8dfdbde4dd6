"""bench/labeling_load.py end to end, small: the real server on a scratch PostgreSQL database,
simulated labelers over HTTP, the audit, the table of medians, and a failover (connections
killed) that costs only retried 503s. The figures themselves are the README's, not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL

BENCH = Path(__file__).resolve().parents[2] / "bench" / "labeling_load.py"


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--pg-admin-url", PG_ADMIN_URL, "--think", "0", "--tasks", "150", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.usefixtures("pg_url")  # skips (locally) or fails (CI) without PostgreSQL
def test_two_sizes_in_two_rounds_print_their_runs_the_audit_and_a_table_of_medians() -> None:
    out = bench("--labelers", "2", "4", "--seconds", "1.5", "--repeat", "2")
    assert out.count("-> ") == 4 and out.count("PASS") == 4
    assert len(re.findall(r"audit: lost=0  duplicated=0  over-assigned=0  label_count mismatch=0", out)) == 4
    # Rounds: every size once per round, so a drifting machine weighs on both sizes alike.
    assert re.findall(r"^labelers=(\d+)", out, re.M) == ["2", "4", "2", "4"]
    table = out.split("medians over 2 round(s):")[1].splitlines()
    rows = {int(line.split()[0]): line.split() for line in table[2:] if line.strip()}
    assert set(rows) == {2, 4}
    assert rows[2][2] == "100%" and rows[2][-1] == rows[4][-1] == "yes"
    assert float(rows[4][1]) > 0  # annotations/s


@pytest.mark.usefixtures("pg_url")
def test_a_failover_during_the_run_costs_only_retried_503s() -> None:
    out = bench("--labelers", "4", "--seconds", "3", "--kill-connections", "1")
    killed = re.search(r"connections killed: 1 times, (\d+) connections", out)
    assert killed and int(killed.group(1)) > 0, out
    assert "PASS" in out and "500" not in out.split("errors by kind:")[1].splitlines()[0]
