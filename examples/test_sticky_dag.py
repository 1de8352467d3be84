"""Testing a workflow, as in the README's "Testing your workflows": copy this file
next to your own app and change the import.

    pytest examples/test_sticky_dag.py

``rstick_local`` runs the workers in the test's own process, on fakeredis, with a
clock that moves only when the test says (``pip install 'rstick[testing]'``);
``rstick_workers`` starts real ``rstick worker`` processes on a real
redis-server (the system's, or ``pip install 'rstick[embedded]'``).
"""

from __future__ import annotations

from examples.sticky_dag import app
from rstick.testing.pytest_plugin import MakeLocal, StartWorkers


def test_every_step_runs_on_the_worker_that_took_the_run(rstick_local: MakeLocal) -> None:
    local = rstick_local(app, workers=["w1", "w2"])
    ref = local.enqueue("StickyWorkflow", {"user": 1})
    local.run_until_idle()
    out = ref.result(timeout=1)
    worker = out["step2"]["worker"]
    assert out["step1a"]["worker"] == out["step1b"]["worker"] == worker
    assert out["step2"]["parents"] == [worker, worker]


def test_the_same_on_real_worker_processes(rstick_workers: StartWorkers) -> None:
    workers = rstick_workers("examples.sticky_dag:app", 2)  # w1 and w2, registered
    ref = workers.client.enqueue("StickyWorkflow", {"user": 1})
    out = ref.result(timeout=30)
    assert {step["worker"] for step in out.values()} in ({"w1"}, {"w2"})
