"""``chaos_app`` as an older deploy had it: Soft3 and Plain3 without their step c
(the new deploy added it); every other workflow as it is.

    rstick worker tests.integration.harness.old_deploy_app:app --worker-id w1 ...
"""

from __future__ import annotations

from rstick import Rstick, StickyStrategy

from . import chaos_app

CHANGED = ("Soft3", "Plain3")

app = Rstick(
    workflows={name: wf for name, wf in chaos_app.app.workflows.items() if name not in CHANGED}
)


def two_steps(name: str, sticky: StickyStrategy | None) -> type:
    cls = type(name, (), {"a": chaos_app.a, "b": chaos_app.b})
    return app.workflow(sticky=sticky, name=name)(cls)


Soft3 = two_steps("Soft3", StickyStrategy.SOFT)
Plain3 = two_steps("Plain3", None)
