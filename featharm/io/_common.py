"""Helpers shared by the io readers."""

from __future__ import annotations


def fmt_list(items, n=5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
