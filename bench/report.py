"""Rows of figures, the machine they ran on, and the table / JSON they print as."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .harness import ROOT, summary


@dataclass
class Row:
    """One figure: rstick's samples (one per repetition), the raw baseline's, and a
    peer's (another job queue doing the same, named in the note)."""

    workload: str
    metric: str
    unit: str
    rstick: list[float]
    raw: list[float] = field(default_factory=list)
    note: str = ""
    peer: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rstick_summary"] = summary(self.rstick) if self.rstick else None
        d["raw_summary"] = summary(self.raw) if self.raw else None
        d["peer_summary"] = summary(self.peer) if self.peer else None
        return d


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _cell(samples: list[float]) -> str:
    if not samples:
        return "-"
    s = summary(samples)
    if len(samples) == 1:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}]"


def table(rows: list[Row]) -> str:
    head = ["workload", "metric", "rstick median [min-max]", "raw Redis median [min-max]", "unit"]
    body = [[r.workload, r.metric, _cell(r.rstick), _cell(r.raw), r.unit] for r in rows]
    if any(r.peer for r in rows):  # the huey row: a column of its own
        head.insert(4, "peer median [min-max]")
        for cells, r in zip(body, rows, strict=True):
            cells.insert(4, _cell(r.peer))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row, r in zip(body, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if r.note:
            lines.append(" " * (widths[0] + 2) + "  " + r.note)
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rstick"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (rstick/ modified)" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def machine(url: str) -> dict[str, Any]:
    import rstick

    info = redis.Redis.from_url(url).info("server")
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "loadavg_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "redis_server": info["redis_version"],
        "redis_py": redis.__version__,
        "parser": parser,
        "rstick": os.path.dirname(rstick.__file__),
        "git": _git(),
    }


def header(m: dict[str, Any]) -> str:
    load = " ".join(f"{x:.2f}" for x in m["loadavg_start"])
    end = m.get("loadavg_end")
    if end:
        load += " -> " + " ".join(f"{x:.2f}" for x in end)
    return (
        f"machine: {m['cores']} cores, {m['cpu']}; Redis {m['redis_server']} on loopback; "
        f"Python {m['python']}, redis-py {m['redis_py']} ({m['parser']})\n"
        f"rstick: {m['rstick']} @ {m['git']}; load average {load}"
    )
