"""The benchmark's table: a peer's column (the huey row) only where a row has one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a top-level package of the repository
    sys.path.insert(0, str(ROOT))

from bench import peer  # noqa: E402
from bench.__main__ import parse  # noqa: E402
from bench.report import Row, table  # noqa: E402


def test_the_table_has_a_peer_column_only_when_a_row_has_a_peer() -> None:
    plain = Row("4 latency", "p50", "ms", [0.3, 0.2, 0.4], [0.1, 0.1, 0.2])
    with_peer = Row("4 latency", "p50, step + INCR", "ms", [0.5], peer=[0.45, 0.5, 0.6])

    assert "peer" not in table([plain])
    lines = table([plain, with_peer]).splitlines()
    assert "peer median [min-max]" in lines[0]
    assert "0.500 [0.450-0.600]" in lines[3]
    assert lines[2].split()[-2] == "-"  # the row without a peer shows none
    assert with_peer.to_json()["peer_summary"] == {"median": 0.5, "min": 0.45, "max": 0.6}


def test_without_huey_the_huey_workload_gives_no_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(peer, "huey_version", lambda: None)
    assert peer.huey(None) == []  # type: ignore[arg-type]  # it returns before using it
    assert "huey is not installed" in capsys.readouterr().err


def test_bench_help_lists_the_huey_workload(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    assert "huey" in capsys.readouterr().out
