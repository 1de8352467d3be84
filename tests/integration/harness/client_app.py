"""What the client tests' workers serve: a no-op task, and a parent whose steps
wait on many sticky children at once
(``rstick worker tests.integration.harness.client_app:app``)."""

from __future__ import annotations

import asyncio
from typing import Any

from rstick import Context, Rstick, StickyStrategy

app = Rstick()


@app.task()
async def echo(ctx: Context, n: int) -> int:
    return n


@app.workflow(sticky=StickyStrategy.SOFT)
class Leaf:
    @app.step()
    async def square(self, ctx: Context) -> dict[str, Any]:
        return {"worker": ctx.worker.id(), "square": ctx.input["n"] ** 2}


@app.workflow(sticky=StickyStrategy.SOFT)
class Fanout:
    @app.step()
    async def gather(self, ctx: Context) -> dict[str, Any]:
        """Spawn ``children`` sticky children at once, then await all their results at once."""
        n = ctx.input["children"]
        refs = await asyncio.gather(
            *(ctx.aspawn_workflow("Leaf", {"n": i}, sticky=True) for i in range(n))
        )
        results = await asyncio.gather(*(ref.result(timeout=120) for ref in refs))
        return {
            "worker": ctx.worker.id(),
            "squares": [r["square"]["square"] for r in results],
            "workers": sorted({r["square"]["worker"] for r in results}),
        }

    @app.step()
    def sibling(self, ctx: Context) -> dict[str, Any]:
        """A ``def`` step beside it, waiting on children of its own from its thread."""
        refs = [ctx.spawn_workflow("Leaf", {"n": i}, sticky=True) for i in range(5)]
        return {"squares": [ref.result(timeout=120)["square"]["square"] for ref in refs]}
