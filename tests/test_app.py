"""Definitions: decorators, the step DAG and what is refused at decoration time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rstick import Context, DefinitionError, Rstick, StickyStrategy, WorkflowDef


def test_workflow_decorator_registers_steps_parents_and_children(app: Rstick) -> None:
    @app.workflow(sticky=StickyStrategy.HARD, on_events=["user:create"], queue="slow")
    class Dag:
        @app.step()
        def a(self, ctx: Context) -> int:
            return 1

        @app.step(retries=3, timeout=2.5, backoff=0.5)
        async def b(self, ctx: Context) -> int:
            return 2

        @app.step(parents=["a", "b"])
        def c(self, ctx: Context) -> int:
            return 3

        def helper(self) -> None:
            """Not a step: no decorator."""

    wf = app.workflows["Dag"]
    assert wf.cls is Dag
    assert list(wf.steps) == ["a", "b", "c"]
    assert sorted(wf.roots) == ["a", "b"]
    assert (wf.sticky, wf.queue, wf.on_events) == (StickyStrategy.HARD, "slow", ("user:create",))
    assert wf.steps["c"].parents == ("a", "b")
    assert wf.steps["a"].children == ("c",) and wf.steps["b"].children == ("c",)
    assert wf.steps["c"].children == ()
    b = wf.steps["b"]
    assert (b.retries, b.timeout, b.backoff, b.is_async) == (3, 2.5, 0.5, True)
    assert wf.steps["a"].is_async is False
    assert not wf.is_task


def test_a_workflow_without_sticky_is_not_sticky(app: Rstick) -> None:
    @app.workflow()
    class Plain:
        @app.step()
        def only(self, ctx: Context) -> None: ...

    assert app.workflows["Plain"].sticky is StickyStrategy.NONE
    assert app.workflows["Plain"].queue == "default"


def test_names_can_be_overridden(app: Rstick) -> None:
    @app.workflow(name="Renamed")
    class Original:
        @app.step(name="first")
        def a(self, ctx: Context) -> None: ...

        @app.step(parents=["first"])
        def second(self, ctx: Context) -> None: ...

    assert list(app.workflows) == ["Renamed"]
    assert app.workflows["Renamed"].steps["second"].parents == ("first",)


def test_cycle_is_refused_and_nothing_registered(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match=r"'Loop'.*\['a', 'b', 'c'\] form a cycle"):

        @app.workflow()
        class Loop:
            @app.step()
            def root(self, ctx: Context) -> None: ...

            @app.step(parents=["root", "c"])
            def a(self, ctx: Context) -> None: ...

            @app.step(parents=["a"])
            def b(self, ctx: Context) -> None: ...

            @app.step(parents=["b"])
            def c(self, ctx: Context) -> None: ...

    assert app.workflows == {}


def test_a_step_that_is_its_own_parent_is_refused(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="step 'a' is its own parent"):

        @app.workflow()
        class Selfish:
            @app.step(parents=["a"])
            def a(self, ctx: Context) -> None: ...


def test_unknown_parent_is_refused(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="workflow 'Typo': step 'b' has unknown parent 'aa'"):

        @app.workflow()
        class Typo:
            @app.step()
            def a(self, ctx: Context) -> None: ...

            @app.step(parents=["aa"])
            def b(self, ctx: Context) -> None: ...

    assert "Typo" not in app.workflows


def test_duplicate_step_names_are_refused(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="workflow 'Twice': duplicate step 'a'"):

        @app.workflow()
        class Twice:
            @app.step()
            def a(self, ctx: Context) -> None: ...

            @app.step(name="a")
            def also_a(self, ctx: Context) -> None: ...

    assert "Twice" not in app.workflows


def test_duplicate_workflow_names_are_refused(app: Rstick) -> None:
    @app.workflow()
    class Same:
        @app.step()
        def a(self, ctx: Context) -> None: ...

    first = app.workflows["Same"]
    with pytest.raises(DefinitionError, match="workflow 'Same' is defined twice"):

        @app.workflow(name="Same")
        class Other:
            @app.step()
            def b(self, ctx: Context) -> None: ...

    with pytest.raises(DefinitionError, match="workflow 'Same' is defined twice"):

        @app.task(name="Same")
        def same(ctx: Context) -> None: ...

    assert app.workflows["Same"] is first


def test_a_workflow_needs_a_step(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="'Empty' has no steps"):

        @app.workflow()
        class Empty:
            def not_a_step(self) -> None: ...


def test_parents_given_as_a_string_are_refused(app: Rstick) -> None:
    # "ab" would otherwise silently mean the parents "a" and "b".
    with pytest.raises(DefinitionError, match="parents must be a list"):
        app.step(parents="a")


def test_negative_retries_are_refused(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="retries must be >= 0"):
        app.step(retries=-1)


def test_negative_retries_of_a_task_are_refused(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="retries must be >= 0"):
        app.task(retries=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": float("nan")}, "timeout must be a finite number of seconds, not nan"),
        ({"timeout": float("inf")}, "timeout must be a finite number of seconds, not inf"),
        ({"timeout": 0}, "timeout must be above 0 seconds, not 0"),
        ({"timeout": "30"}, "timeout must be a number of seconds, not str '30'"),
        ({"backoff": -1}, "backoff must be at least 0 seconds, not -1"),
        ({"backoff": float("inf")}, "backoff must be a finite number"),
        ({"retries": 1.5}, "retries must be an int, not float 1.5"),
        ({"retries": True}, "retries must be an int, not bool True"),
        ({"retries": -1}, "retries must be >= 0, not -1"),
    ],
)
def test_step_and_task_numbers_out_of_bounds_are_refused(
    app: Rstick, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        app.step(**options)
    with pytest.raises(DefinitionError, match=message):
        app.task(**options)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "schedule_timeout must be a finite number of seconds, not nan"),
        (-1, "schedule_timeout must be at least 0 seconds, not -1"),
        (1e12, "schedule_timeout must be at most 31536000 seconds"),
        ("300", "schedule_timeout must be a number of seconds, not str '300'"),
    ],
)
def test_schedule_timeouts_out_of_bounds_are_refused(app: Rstick, value: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        app.step(schedule_timeout=value)
    with pytest.raises(DefinitionError, match=message):
        app.workflow(schedule_timeout=value)


def test_settings_out_of_bounds_are_refused() -> None:
    for settings, message in [
        ({"heartbeat": float("nan")}, "heartbeat must be a finite number"),
        ({"worker_ttl": float("inf")}, "worker_ttl must be a finite number"),
        ({"retention": 0.5}, "retention must be at least 1 second"),
        ({"max_deliveries": 0}, "max_deliveries must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            Rstick(redis_url="redis://fake", **settings)


def test_bare_step_decorator_works_like_the_call(app: Rstick) -> None:
    @app.workflow()
    class Bare:
        @app.step
        def a(self, ctx: Context) -> int:
            return 1

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None: ...

        @app.step
        async def c(self, ctx: Context) -> None: ...

    wf = app.workflows["Bare"]
    assert list(wf.steps) == ["a", "b", "c"] and sorted(wf.roots) == ["a", "c"]
    a = wf.steps["a"]
    assert (a.fn, a.parents, a.children, a.retries, a.timeout) == (Bare.a, (), ("b",), 0, None)
    assert wf.steps["c"].is_async
    assert Bare().a(None) == 1  # the method itself is returned


@pytest.mark.parametrize(
    ("workflow", "step", "message"),
    [
        ("Ok", "my step", r"step name 'my step' contains whitespace \(' '\)"),
        ("Ok", "a\tb", r"step name 'a\\tb' contains whitespace"),
        ("Ok", "a\u00a0b", r"step name 'a\\xa0b' contains whitespace"),
        ("Ok", "a|b", r"step name 'a\|b' contains '\|'"),
        ("Ok", "", "step name '' must be a non-empty string"),
        ("My Flow", "a", "workflow name 'My Flow' contains whitespace"),
        ("a|b", "a", r"workflow name 'a\|b' contains '\|'"),
        ("", "a", "workflow name '' must be a non-empty string"),
        ("Ok", "a\x00b", r"step name 'a\\x00b' contains a control character \(U\+0000\)"),
        ("Ok", "a\x7f", r"contains a control character \(U\+007F\)"),
        ("Ok", "a\x1fb", "contains whitespace"),  # str.split() splits on \x1c-\x1f
        ("Ok", "a\u2028b", "contains whitespace"),  # the line separator
        ("Ok", "a\u200bb", r"contains a format character \(U\+200B\)"),  # zero width
        ("Ok", "a\u202eb", r"contains a format character \(U\+202E\)"),  # right-to-left
        ("Ok", "a\ud800", r"contains a surrogate \(U\+D800\)"),  # no UTF-8 for it
        ("Ok", "{a}", "step name '{a}' contains '{': braces mark a key's hash tag"),
        ("Ok", "a}", "contains '}'"),
        ("{eu}", "a", "workflow name '{eu}' contains '{'"),
        ("W" * 201, "a", "is 201 bytes long, over the limit of 200"),
        ("Ok", "é" * 101, "is 202 bytes long, over the limit of 200"),
    ],
)
def test_names_that_the_redis_layout_cannot_hold_are_refused(
    app: Rstick, workflow: str, step: str, message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):

        @app.workflow(name=workflow)
        class Named:
            @app.step(name=step)
            def a(self, ctx: Context) -> None: ...

    assert app.workflows == {}


def test_a_name_at_the_length_limit_is_fine(app: Rstick) -> None:
    @app.workflow(name="W" * 200)
    class Long:
        @app.step(name="é" * 100)
        def a(self, ctx: Context) -> None: ...

    assert list(app.workflows["W" * 200].steps) == ["é" * 100]


def test_task_and_queue_names_are_checked_too(app: Rstick) -> None:
    with pytest.raises(DefinitionError, match="task name 'send mail' contains whitespace"):

        @app.task(name="send mail")
        def send(ctx: Context) -> None: ...

    for bad in ("two queues", "", "q\n"):
        with pytest.raises(DefinitionError, match="queue name"):
            app.task(queue=bad)
        with pytest.raises(DefinitionError, match="queue name"):
            app.workflow(queue=bad)
    assert app.workflows == {}


def test_event_names_are_checked_at_definition(app: Rstick) -> None:
    for bad, message in [
        ("user create", "event name 'user create' contains whitespace"),
        ("", "event name '' must be a non-empty string"),
        ("ev\x00", r"event name 'ev\\x00' contains a control character"),
        (None, "event name None must be a non-empty string"),
    ]:
        with pytest.raises(DefinitionError, match=message):
            app.workflow(on_events=["ok", bad])  # type: ignore[list-item]
        with pytest.raises(DefinitionError, match=message):
            app.task(on_events=[bad])  # type: ignore[list-item]
    # A string is not a list of events: "user:create" would mean 11 one-letter events.
    with pytest.raises(DefinitionError, match="on_events must be a list of event names"):
        app.workflow(on_events="user:create")
    with pytest.raises(DefinitionError, match="on_events must be a list of event names"):
        app.task(on_events="user:create")
    assert app.workflows == {}


def test_names_with_other_punctuation_are_fine(app: Rstick) -> None:
    @app.workflow(name="billing:v2.eu", queue="q:1")
    class Flow:
        @app.step(name="fetch.data")
        def a(self, ctx: Context) -> None: ...

        @app.step(parents=["fetch.data"], name="née-ß")
        def b(self, ctx: Context) -> None: ...

    assert list(app.workflows["billing:v2.eu"].steps) == ["fetch.data", "née-ß"]


def test_task_decorator_bare_and_with_options(app: Rstick) -> None:
    @app.task
    def plain(ctx: Context, x: int) -> int:
        return x

    @app.task(retries=2, timeout=1.0, queue="mail", name="send")
    async def send_email(ctx: Context, to: str) -> None: ...

    assert plain(None, 3) == 3  # the function itself is returned
    wf = app.workflows["plain"]
    assert wf.is_task and wf.sticky is StickyStrategy.NONE
    assert list(wf.steps) == ["plain"] and wf.roots == ["plain"]
    send = app.workflows["send"]
    assert send.queue == "mail" and send.is_task
    step = send.steps["send"]
    assert (step.retries, step.timeout, step.is_async) == (2, 1.0, True)
    assert "send_email" not in app.workflows


def test_retry_delay_doubles_and_is_capped() -> None:
    app = Rstick(redis_url="redis://fake")

    @app.task(backoff=0.5)
    def job(ctx: Context) -> None: ...

    step = app.workflows["job"].steps["job"]
    assert [step.retry_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert step.retry_delay(30) == 300.0
    assert step.retry_delay(5000) == 300.0  # 2**4999 is no float: no OverflowError


def test_definition_round_trips_through_json(app: Rstick) -> None:
    @app.workflow(
        sticky=StickyStrategy.SOFT, on_events=["e"], queue="q", schedule_timeout=9.0, retention=60
    )
    class Dag:
        @app.step(retries=1, timeout=2.0, backoff=3.0, schedule_timeout=5.0)
        def a(self, ctx: Context) -> None: ...

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None: ...

    raw = app.workflows["Dag"].to_json()
    data: dict[str, Any] = json.loads(raw)
    assert data["steps"][1] == {
        "name": "b",
        "parents": ["a"],
        "retries": 0,
        "timeout": None,
        "backoff": 1.0,
        "schedule_timeout": None,
    }
    remote = WorkflowDef.from_json(raw)
    assert (remote.name, remote.sticky, remote.queue, remote.on_events) == (
        "Dag",
        StickyStrategy.SOFT,
        "q",
        ("e",),
    )
    assert (remote.schedule_timeout, remote.retention) == (9.0, 60)
    assert remote.steps["a"].children == ("b",) and remote.steps["a"].retries == 1
    # What a client without the code needs to enqueue as one with it would.
    a = remote.steps["a"]
    assert (a.timeout, a.backoff, a.schedule_timeout) == (2.0, 3.0, 5.0)
    assert remote.roots == ["a"]


def test_a_workflow_without_retention_takes_the_apps() -> None:
    app = Rstick(redis_url="redis://fake", retention=120)

    @app.task
    def job(ctx: Context) -> None: ...

    @app.task(retention=0)
    def fire_and_forget(ctx: Context) -> None: ...

    assert app.workflows["job"].retention == 120
    assert app.workflows["fire_and_forget"].retention == 0
    with pytest.raises(DefinitionError, match="retention"):

        @app.task(retention=-1)
        def bad(ctx: Context) -> None: ...


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSTICK_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("RSTICK_NAMESPACE", "envns")
    app = Rstick()
    assert (app.redis_url, app.namespace) == ("redis://127.0.0.1:6390/2", "envns")
    assert app.keys.queue("default") == "{envns}:q:default"
    with pytest.raises(ValueError, match="worker_ttl"):
        Rstick(heartbeat=5.0, worker_ttl=5.0)
