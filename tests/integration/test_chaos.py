"""The chaos test: 5 worker processes, 300 mixed runs and a few hanging ones, and for
30 s: SIGKILLs and restarts, pauses past and within the ttl, a worker with its clock
11 s behind, a worker without the sticky workflows (alone for a while), one Redis
crash, Redis's memory full for longer than the ttl, sync steps hung past their
timeout.

The storm (``chaos_storm``) lasts about 30 s; the checks (``chaos_checks``) list
every broken promise. ``python -m bench.chaos`` runs it longer, with flags.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the workers import tests.integration.harness.chaos_app too
    sys.path.insert(0, str(ROOT))

from tests.integration.harness.chaos_checks import counts, falsely_dead, verify  # noqa: E402
from tests.integration.harness.chaos_storm import Config, Storm  # noqa: E402

pytestmark = pytest.mark.integration


def skew() -> float | None:
    """A worker's clock 11 s behind, with Debian's faketime: CI installs it; elsewhere
    the storm goes on without it, and says so."""
    if shutil.which("faketime"):
        return -11.0
    if os.environ.get("CI"):
        pytest.fail("faketime is not installed (apt-get install faketime): .ci/run installs it")
    warnings.warn("faketime is not installed: no worker runs with a skewed clock", stacklevel=2)
    return None


def test_every_promise_holds_through_the_storm(tmp_path: Path) -> None:
    config = Config(runs=300, workers=4, seconds=30.0, settle=30.0, skew=skew())
    outcome = Storm(config, tmp_path, say=print).run()
    figures = counts(outcome)
    print(figures)  # shown when the test fails, with the seed to replay it

    problems = verify(outcome)
    assert not problems, "\n".join(map(str, problems[:40]))
    # No worker up was taken for dead: not after the Redis restart, nor while
    # Redis's memory was full, nor the skewed one, nor one paused within its ttl.
    assert not falsely_dead(outcome)
    # The storm did what it says: the checks above judged real faults.
    assert figures["runs"] == len(outcome.plan) > 300
    assert figures["kills"] >= 4
    assert figures["back under a new id"] >= 1
    assert figures["redis restarts"] == 1
    assert figures["steps lost with their worker"] >= 1
    assert figures["reassignments"] + figures["parks"] >= 1
    assert figures["pauses past the ttl"] >= 1 and figures["pauses within the ttl"] >= 1
    assert figures["declared dead after a pause"] >= 1
    if config.skew:
        assert figures["skewed workers"] >= 1
        assert figures["steps run with a skewed clock"] >= 1
    assert figures["code gaps"] == 1 and figures["graceful stops"] >= 1
    assert figures["runs that waited for code"] >= 1
    assert figures["steps adopted by a worker with the code"] >= 1
    assert figures["steps run without the sticky code"] >= 1
    assert figures["redis memory full (s)"] > config.worker_ttl
    assert figures["hung attempts timed out"] >= 1
    assert figures["retries started beside their hung attempt"] >= 1
