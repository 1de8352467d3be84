"""Two parallel first steps and a join, all on the worker that took the run.

Start a few workers, each in its own terminal, from the repository's root::

    rstick worker examples.sticky_dag:app --worker-id w1
    rstick worker examples.sticky_dag:app --worker-id w2

then start a run and wait for its result::

    rstick enqueue StickyWorkflow --input '{"user": 1}' --wait

Every step returns the id of the worker that ran it: under SOFT stickiness
``step1a``, ``step1b`` and ``step2`` all name the same worker, although
``step1a`` and ``step1b`` are independent and may run at the same time.
"""

from __future__ import annotations

from typing import Any

from rstick import Context, Rstick, StickyStrategy

app = Rstick()  # RSTICK_REDIS_URL / RSTICK_NAMESPACE, or the worker's --redis / --namespace


@app.workflow(sticky=StickyStrategy.SOFT)
class StickyWorkflow:
    @app.step()
    def step1a(self, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker.id()}

    @app.step()
    def step1b(self, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker.id()}

    @app.step(parents=["step1a", "step1b"])
    async def step2(self, ctx: Context) -> dict[str, Any]:
        parents = [ctx.parent_output(p)["worker"] for p in ("step1a", "step1b")]
        return {"worker": ctx.worker.id(), "parents": parents}


if __name__ == "__main__":  # python -m examples.sticky_dag, with workers running
    print(app.enqueue("StickyWorkflow", {"user": 1}).result(timeout=30))
