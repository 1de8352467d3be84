"""An older deploy of ``chaos_app``: the same queue, only some of its workflows.

    rstick worker tests.integration.harness.chaos_partial:app --worker-id p1 ...

A worker of this app takes entries of the workflows it lacks from the shared
queue too; it must never run, lose or dead-letter them: it forwards them to a
worker that has their code, or parks them until one comes (``take.lua``).
"""

from __future__ import annotations

from rstick import Rstick

from . import chaos_app

# Plain3 and the tasks; no sticky workflow: Soft3, Hard3, HardLong and Hang wait
# for a worker of chaos_app.
SERVES = ("Plain3", "job", "slow", "aslow")
LACKS = tuple(sorted(set(chaos_app.app.workflows) - set(SERVES)))

app = Rstick(workflows={name: chaos_app.app.workflows[name] for name in SERVES})
