"""Running the ``rstick`` command in the integration tests (the worker processes
themselves: ``rstick.testing.processes``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rstick.testing import processes

ROOT = Path(__file__).resolve().parents[3]  # `examples.*` and `tests.integration.*` import from it


def rstick_command() -> list[str]:
    """The installed ``rstick`` console script beside this Python, else the same CLI
    through ``python -c`` (an editable install made before the script existed)."""
    script = Path(sys.executable).with_name("rstick")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", processes.LAUNCH]


def subprocess_env() -> dict[str, str]:
    """The test's environment, with the repository importable (see
    ``rstick.testing.processes.subprocess_env``)."""
    return processes.subprocess_env([ROOT])


def rstick_cli(url: str, namespace: str, *args: str, timeout: float = 30.0) -> Any:
    """Run ``rstick ARGS --json --redis URL --namespace NS``; its JSON output, parsed."""
    out = subprocess.run(
        [*rstick_command(), *args, "--json", "--redis", url, "--namespace", namespace],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"rstick {' '.join(args)} exited {out.returncode}:\n{out.stderr}"
    return json.loads(out.stdout)
