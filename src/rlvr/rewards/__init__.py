"""Pure reward shaping: format rules, length rewards, overlong penalty, composition.

Imports nothing else from rlvr, and never torch.distributed, ray or vllm.
"""

from rlvr.rewards.compose import combine
from rlvr.rewards.format import FormatResult, check_format, last_answer_block
from rlvr.rewards.length import cosine_length_reward, overlong_penalty

__all__ = [
    "FormatResult",
    "check_format",
    "combine",
    "cosine_length_reward",
    "last_answer_block",
    "overlong_penalty",
]
