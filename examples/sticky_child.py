"""A parent workflow whose steps spawn sticky children: each child runs on the
parent's worker, so it can use what the parent left on that machine.

    rstick worker examples.sticky_child:app --concurrency 1
    python -m examples.sticky_child          # enqueue one run, print where each part ran
    python -m examples.sticky_child --plain  # the same with ordinary (not sticky) children

``spawn_workflow(..., sticky=True)`` pins the child to this worker when it is
created: its first step goes to this worker's own stream, never to the shared
queue. While a parent step waits for a child (sticky or not), it lends its slot
to the worker, so even ``--concurrency 1`` does not deadlock.

Spawning is idempotent: the child's run id comes from the parent run, the parent
step and the spawn's place in that step, so if a parent step is retried or re-run
after its worker died, it re-attaches to the child it already started instead of
starting a second one (pass ``key=f"{ctx.attempt}"`` to want a fresh child per
attempt).
"""

from __future__ import annotations

from typing import Any

from rstick import Context, Rstick, StickyStrategy

app = Rstick()


@app.workflow(sticky=StickyStrategy.SOFT)  # a sticky child needs a sticky strategy
class Child:
    @app.step()
    def prepare(self, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker.id(), "n": ctx.input["n"]}

    @app.step(parents=["prepare"])
    async def square(self, ctx: Context) -> dict[str, Any]:
        n = ctx.parent_output("prepare")["n"]
        return {"worker": ctx.worker.id(), "square": n * n}


@app.workflow(sticky=StickyStrategy.SOFT)
class Parent:
    @app.step()
    def sync_child(self, ctx: Context) -> dict[str, Any]:
        """A ``def`` step: spawn, then block on the child's result."""
        sticky = ctx.input.get("sticky", True)  # False: the child may run on any worker
        ref = ctx.spawn_workflow("Child", {"n": ctx.input["n"]}, sticky=sticky)
        result = ref.result(timeout=60)
        return {
            "worker": ctx.worker.id(),
            "child_run": ref.run_id,
            "child_worker": result["square"]["worker"],
            "child": result,
        }

    @app.step()
    async def async_child(self, ctx: Context) -> dict[str, Any]:
        """An ``async def`` step: spawn and await the child."""
        sticky = ctx.input.get("sticky", True)
        ref = await ctx.aspawn_workflow("Child", {"n": ctx.input["n"] + 1}, sticky=sticky)
        result = await ref.result(timeout=60)
        return {
            "worker": ctx.worker.id(),
            "child_run": ref.run_id,
            "child_worker": result["square"]["worker"],
            "child": result,
        }


if __name__ == "__main__":
    import sys

    sticky = "--plain" not in sys.argv[1:]
    out = app.enqueue("Parent", {"n": 3, "sticky": sticky}).result(timeout=60)
    for step, o in out.items():
        print(
            f"{step}: parent on {o['worker']}, child {o['child_run'][:8]} on "
            f"{o['child_worker']}, square {o['child']['square']['square']}"
        )
