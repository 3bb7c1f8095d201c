"""benchmarks/serving_soak.py for a minute (its committed runs last 10 and 30): a real server under a mix of
good and bad clients, an overload burst and a SIGKILL with restart, losing nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="PyTriton is not installed (pip install 'psp-deploy[serve]')")
pytestmark = pytest.mark.xdist_group("serving")  # one real server at a time (see tests/conftest.py)
SCRIPT = Path(__file__).parents[2] / "benchmarks" / "serving_soak.py"


def test_a_minute_of_soak_loses_nothing_and_counts_every_failure(bundles, tmp_path):
    args = ["--minutes", "1", "--clients", "3", "--bundle", str(bundles("rgb-scaled")[0].root)]
    args += ["--max-batch", "2", "--max-queue-size", "2", "--retry-deadline", "600", "--output", str(tmp_path)]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (found,) = tmp_path.glob("*-serving-soak.json")
    result = json.loads(found.read_text())
    assert found.with_suffix(".md").exists() and found.with_suffix(".png").exists()

    assert result["lost"] == 0, result["lost_requests"]
    assert result["minutes"] == 1 and isinstance(result["memory_growth"], float)
    assert [e["event"] for e in result["events"]] == ["burst", "kill"]
    assert result["by_outcome"]["ok"] > 0 and result["by_outcome"]["error"] > 0
    # every failure the clients saw is counted under its reason by the server (the life after the restart)
    assert result["accounting"] and all(entry["ok"] for entry in result["accounting"].values()), result["accounting"]
    # more at once than the queue holds: some refused, each at once (about 100 ms on a quiet machine)
    assert result["refusal_s"]["count"] > 0 and result["refusal_s"]["max"] < 1.0, result["refusal_s"]
    assert all(row["rss_mb_0"] for row in result["per_minute"][:1])
