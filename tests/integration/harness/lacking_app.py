"""``chaos_app`` without some of its workflows: an older deploy, or another service
on the same Redis, queue and namespace.

    rstick worker tests.integration.harness.lacking_app:app --worker-id w1 ...
"""

from __future__ import annotations

from rstick import Rstick

from . import chaos_app

LACKS = ("Soft3", "Plain3", "job", "Brief3")

app = Rstick(
    workflows={name: wf for name, wf in chaos_app.app.workflows.items() if name not in LACKS}
)
