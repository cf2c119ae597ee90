"""Key conversion between checkpoint layouts, as data plus a small engine.

A ``KeyMap`` is a list of rules ``(official, other)``. Each side is a key template: ``{}`` stands for a block
index (digits) and a template that ends in ``.`` matches any leaf below it (``weight``, ``bias``, ``gamma``...).
Every key must match exactly one rule, in either direction, or the conversion fails with the keys named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

V = TypeVar("V")


class KeyMapError(ValueError):
    """A key that no rule (or more than one rule) maps."""


def _compile(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(r"\{\}", r"(\d+)")
    tail = r"([A-Za-z0-9_.]+)" if template.endswith(".") else "()"
    return re.compile(f"^{body}{tail}$")


def _fill(template: str, indices: tuple[str, ...], leaf: str) -> str:
    return template.format(*indices) + leaf


@dataclass(frozen=True)
class KeyMap:
    """Bidirectional key renaming: ``forward`` goes official -> other layout, ``reverse`` back."""

    name: str
    rules: tuple[tuple[str, str], ...]

    @cached_property
    def _patterns(self) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
        return [_compile(a) for a, _ in self.rules], [_compile(b) for _, b in self.rules]

    def _convert_key(self, key: str, reverse: bool) -> str:
        src_patterns = self._patterns[1 if reverse else 0]
        hits = [(i, m) for i, p in enumerate(src_patterns) if (m := p.match(key))]
        if len(hits) != 1:
            what = "no rule" if not hits else f"{len(hits)} rules"
            raise KeyMapError(f"{self.name}: {what} for key {key!r}")
        i, m = hits[0]
        groups = m.groups()
        dst = self.rules[i][0 if reverse else 1]
        return _fill(dst, groups[:-1], groups[-1])

    def lookup(self, key: str, reverse: bool = False) -> str | None:
        """The new name of one key, or None when no rule (or more than one) maps it."""
        try:
            return self._convert_key(key, reverse)
        except KeyMapError:
            return None

    def convert_keys(self, keys: Iterable[str], reverse: bool = False) -> dict[str, str]:
        """Map each key to its new name; raises ``KeyMapError`` naming every key that does not map once."""
        out: dict[str, str] = {}
        errors: list[str] = []
        for key in keys:
            try:
                out[key] = self._convert_key(key, reverse)
            except KeyMapError as e:
                errors.append(str(e))
        if errors:
            raise KeyMapError("; ".join(errors[:10]) + (f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""))
        targets = list(out.values())
        if len(set(targets)) != len(targets):
            dupes = sorted({t for t in targets if targets.count(t) > 1})
            raise KeyMapError(f"{self.name}: several keys map onto {dupes[:5]}")
        return out

    def forward(self, state: Mapping[str, V]) -> dict[str, V]:
        """Official layout -> other layout."""
        names = self.convert_keys(state)
        return {names[k]: v for k, v in state.items()}

    def reverse(self, state: Mapping[str, V]) -> dict[str, V]:
        """Other layout -> official layout."""
        names = self.convert_keys(state, reverse=True)
        return {names[k]: v for k, v in state.items()}
