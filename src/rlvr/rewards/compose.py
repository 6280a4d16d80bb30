"""Weighted composition of named reward parts."""

from __future__ import annotations

from collections.abc import Mapping


def combine(parts: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """sum_k weights[k] * parts[k]; a part without a weight counts with weight 1.

    A weight naming no part is an error (a typo in a recipe must not silently drop a reward).
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(parts))
    if unknown:
        raise KeyError(f"reward weights name unknown parts {unknown}; parts are {sorted(parts)}")
    return float(sum(weights.get(name, 1.0) * value for name, value in parts.items()))
