"""The looks `ffnn report` took at an experiment, and whether it grew since (pure: json only).

A fixed-sample verdict holds for one look. Someone who reports at 5 seeds, adds seeds because a
comparison was undecided and reports again is testing repeatedly; re-reporting at 5, 10, 20 and 40
seeds, stopping once decided, made 9-15 % of null families "decided" instead of 5 %. So each report
records its look (seeds per model, alpha, margin) on the experiment, and a family with a comparison
whose seeds grew since an earlier look is decided by the anytime-valid rule instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

MAX_LOOKS = 100  # kept on the experiment; older ones are dropped (the earliest matters most: kept first)


def parse_looks(text: str | None) -> list[dict[str, Any]]:
    """``parse_looks('[{"seeds": {"C": 5}, "alpha": 0.05, "margin": 0.2}]')[0]["seeds"] == {"C": 5}``"""
    if not text:
        return []
    try:
        looks = json.loads(text)
    except ValueError:
        return []
    return [x for x in looks if isinstance(x, dict) and isinstance(x.get("seeds"), dict)] \
        if isinstance(looks, list) else []


def add_look(looks: list[dict[str, Any]], seeds: dict[str, int], alpha: float, margin: float) -> str | None:
    """The tag text with this look appended; None when it is the same as the last one (nothing new seen)."""
    look = {"seeds": dict(sorted(seeds.items())), "alpha": alpha, "margin": margin}
    if looks and looks[-1] == look:
        return None
    kept = looks if len(looks) < MAX_LOOKS else [looks[0], *looks[-(MAX_LOOKS - 2):]]
    return json.dumps([*kept, look], separators=(",", ":"))


def grown_steps(looks: Sequence[dict[str, Any]], steps: Sequence[tuple[str, str, str]], seeds: dict[str, int]
                ) -> dict[str, int]:
    """Families -> the fewest seeds an earlier look saw, for families with a step that grew since.

    ``steps``: (family, a, b). A step grew when an earlier look had both models with fewer seeds than
    now (the smaller side of the two).
    ``grown_steps([{"seeds": {"C": 5, "D": 5}}], [("tutorial", "C", "D")], {"C": 10, "D": 10})``
    -> ``{"tutorial": 5}``
    """
    out: dict[str, int] = {}
    for family, a, b in steps:
        now = min(seeds.get(a, 0), seeds.get(b, 0))
        for look in looks:
            had = look["seeds"]
            if a in had and b in had and min(int(had[a]), int(had[b])) < now:
                out[family] = min(out.get(family, now), min(int(had[a]), int(had[b])))
    return out
