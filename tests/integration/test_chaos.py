"""The chaos test: 4 worker processes, 300 mixed runs, SIGKILLs, restarts and one Redis crash.

The storm (``chaos_storm``) lasts about 25 s; the checks (``chaos_checks``) list
every broken promise. ``python -m tests.bench.chaos`` runs it longer, with flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the workers import tests.integration.chaos_app too
    sys.path.insert(0, str(ROOT))

from tests.integration.chaos_checks import counts, falsely_dead, verify  # noqa: E402
from tests.integration.chaos_storm import Config, Storm  # noqa: E402

pytestmark = pytest.mark.integration


def test_nothing_is_lost_when_workers_and_redis_crash(tmp_path: Path) -> None:
    config = Config(runs=300, workers=4, seconds=25.0, settle=30.0)
    outcome = Storm(config, tmp_path, say=print).run()
    figures = counts(outcome)
    print(figures)  # shown when the test fails, with the seed to replay it

    problems = verify(outcome)
    assert not problems, "\n".join(map(str, problems[:40]))
    # No live worker was taken for dead, not even after the Redis restart.
    assert not falsely_dead(outcome)
    # The storm did what it says: the checks above judged real crashes.
    assert figures["runs"] == 300
    assert figures["kills"] >= 4
    assert figures["back under a new id"] >= 1
    assert figures["redis restarts"] == 1
    assert figures["steps lost with their worker"] >= 1
    assert figures["reassignments"] + figures["parks"] >= 1
