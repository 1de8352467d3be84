"""Counted nouns in messages: ``1 running step``, ``2 running steps``."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 dead letter``, ``0 dead letters``; ``nouns`` for a plural not made with "s"."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {nouns or noun + 's'}"
