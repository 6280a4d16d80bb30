"""The rollout engine protocol: token ids in, sampled token ids and log-probs out.

An engine knows token ids only, never the trainer, the task or the tokenizer's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. n completions per prompt share that prompt's prefill.

    temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters. Generation of a
    sequence stops at any id in stop_token_ids (the id is kept in the completion, finish_reason
    "stop"), when the completion's text would end with one of stop_strings (needs a decode
    function on the engine), or after max_new_tokens (finish_reason "length").
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Rollout:
    """One sampled completion of one prompt.

    prompt_index: position of its prompt in the generate() call's prompt list.
    token_ids:    completion tokens (the stop token included when finish_reason == "stop").
    logprobs:     log-probability of each completion token under the sampling distribution's
                  model (raw logits / temperature, before top-p / top-k filtering), float32.
    """

    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        """Return len(prompt_ids) * params.n rollouts, ordered by prompt then sample."""
        ...

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the engine's weights with the learner's (same names as the HF model)."""
        ...
