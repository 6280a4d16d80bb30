"""Rollout engines behind one small protocol (base.py). vLLM is imported only in vllm_engine.py."""

from rlvr.rollout.base import Rollout, RolloutEngine, SamplingParams

__all__ = ["Rollout", "RolloutEngine", "SamplingParams"]
