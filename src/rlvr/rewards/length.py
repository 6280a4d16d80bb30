"""Length-based reward shaping, pure functions of scalars."""

from __future__ import annotations

import math


def cosine_length_reward(
    length: int,
    max_length: int,
    correct: bool,
    *,
    correct_start: float = 2.0,
    correct_end: float = 1.0,
    wrong_start: float = -10.0,
    wrong_end: float = 0.0,
    exceed_penalty: float = -10.0,
) -> float:
    """Cosine length reward of "Demystifying Long Chain-of-Thought Reasoning in LLMs" (Yeo et al. 2025).

    R(t) = r_L + 0.5 (r_0 - r_L) (1 + cos(pi t / L)) for t < L: at t = 0 the reward is r_0, at
    t = L it is r_L. Correct answers go from correct_start (short) down to correct_end (long):
    shorter correct answers earn more. Wrong answers go from wrong_start (short, the harsher
    value) up to wrong_end (long): a short wrong answer is penalised more than one that thought
    longer. At or past the limit the reward is exceed_penalty.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if length >= max_length:
        return exceed_penalty
    r0, r_l = (correct_start, correct_end) if correct else (wrong_start, wrong_end)
    return r_l + 0.5 * (r0 - r_l) * (1.0 + math.cos(math.pi * length / max_length))


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

    0 while length <= max_length - cache_length; ((max_length - cache_length) - length) /
    cache_length inside the cache window (linear from 0 down to -1); -1 beyond max_length.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    start = max_length - cache_length
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / cache_length
    return -1.0
