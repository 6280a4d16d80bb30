"""PPO's value model (critic) for rl.advantage=gae.

The critic is a causal LM whose LM head is replaced by a linear value head (hidden -> 1): a copy
of the policy when RL starts (its SFT weights, as verl and OpenRLHF start the critic from the
actor) or the model of `critic.path`. Its value for completion position t is read where the LM
would predict completion token t, i.e. V(prompt + completion[:t]), the state before that token;
with the outcome reward on the last token and gamma = lam = 1 the GAE advantage of every token is
R - V_t and the value target (the return) is R.

One RL step with a critic (rl.update_policy):
    old values V = critic.values(batch)                       no grad, (B, T)
    advantages, returns = algorithms.gae_advantages_returns(rewards, mask, V, gamma, lam, kl)
    critic.update(...): ppo_epochs x mini_batches AdamW steps on algorithms.value_loss(V_new, V,
                        returns, mask, clip=critic.value_clip), token-mean over each mini-batch
    the actor's steps as without a critic (none during critic.warmup_steps)

Metrics (verl's names): critic/vf_loss, critic/vf_clipfrac, critic/vpred_mean, critic/grad_norm,
critic/lr, critic/skipped_updates from the update; critic/values/mean, critic/returns/mean and
critic/vf_explained_var (1 - Var(R - V) / Var(R) over the batch's tokens, of the values predicted
before the critic trained on the batch) from value_statistics.

The critic lives in the driver process; the data-parallel learner (rlvr.distributed) has none,
and the config refuses that combination.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlvr import algorithms
from rlvr.config import CriticConfig, RLConfig
from rlvr.errors import ConfigError
from rlvr.models import lora
from rlvr.trainers import metric_names as M
from rlvr.trainers.common import RunningMeans, autocast_context, clip_and_step, micro_batches, set_lr
from rlvr.trainers.sequences import (
    RolloutBatch,
    forward_lengths,
    grouped_forward,
    mini_batch_indices,
    shares_prompts,
    whole_forward,
)


def value_model(lm: nn.Module, seed: int) -> nn.Module:
    """A copy of causal LM `lm` whose lm_head is a fresh linear value head (hidden -> 1).

    The head's weights are N(0, 1 / (hidden + 1)) from a generator seeded with `seed` (no global
    RNG is drawn, so building a critic does not shift any other random stream), its bias 0. The
    LM's forward and completion_logits then return values (.., 1) where they returned logits.
    """
    lm_head = getattr(lm, "lm_head", None)
    if not isinstance(lm_head, nn.Linear):
        raise ConfigError(f"critic: {type(lm).__name__} has no linear lm_head to replace by a value head")
    model = copy.deepcopy(lm)
    hidden = lm_head.in_features
    param = lm_head.weight
    head = nn.Linear(hidden, 1, bias=True, device=param.device, dtype=param.dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn((1, hidden), generator=generator) / (hidden + 1))
        head.bias.zero_()
    model.lm_head = head  # unties it from the embedding, if it was tied
    return model.requires_grad_(True)


def check_critic_dir(path: str, policy_config: Any) -> Path:
    """The directory of critic.path, refused (ConfigError) unless it is an HF model directory whose
    vocabulary size is the policy's: the critic reads the policy's token ids."""
    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"config key critic.path: {directory} is not an HF model directory "
                          "(no config.json)")
    vocab = json.loads(config_file.read_text()).get("vocab_size")
    want = getattr(policy_config, "vocab_size", None)
    if want is not None and vocab != want:
        raise ConfigError(f"config key critic.path: {directory} has vocab_size {vocab}, the policy {want}; "
                          "the critic must read the policy's tokens")
    return directory


def sequence_values(model: nn.Module, batch: RolloutBatch, index: Sequence[int], width: int,
                    device: torch.device, packed: bool, token_budget: int,
                    autocast: str = "none") -> torch.Tensor:
    """Values (len(index), width) float32 of the completions of sequences `index`, 0 on padding.

    The same forward as the policy's log-probs (sequences.sequence_values: prompts shared within a
    micro-batch on rlvr's native model), with the value head's output in place of log-probs.
    Differentiable when called with grad enabled.
    """
    index = list(index)
    out = torch.zeros((len(index), width), device=device)
    forward = grouped_forward if shares_prompts(model, packed) else whole_forward
    for mb in micro_batches(forward_lengths(model, batch, index, packed), token_budget):
        with autocast_context(device, autocast):
            head, _, place = forward(model, batch, [index[k] for k in mb], width, device, packed)
        out[mb] = place(head[..., 0].float())
    return out


def value_statistics(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """critic/values/mean, critic/returns/mean and critic/vf_explained_var over the valid tokens.

    Explained variance 1 - Var(R - V) / Var(R): 1 when the values predict the returns exactly, 0
    for a constant prediction at their mean, negative for worse; left out when the returns do not
    vary (nothing to explain).
    """
    valid = mask.bool()
    v, r = values[valid].double(), returns[valid].double()
    if v.numel() == 0:
        return {}
    out = {M.CRITIC_VALUES_MEAN: float(v.mean()), M.CRITIC_RETURNS_MEAN: float(r.mean())}
    var = float(r.var(unbiased=False)) if r.numel() > 1 else 0.0
    if var > 0:
        out[M.CRITIC_VF_EXPLAINED_VAR] = 1.0 - float((r - v).var(unbiased=False)) / var
    return out


class Critic:
    """The value model with its own AdamW (see the module docstring)."""

    def __init__(self, model: nn.Module, cfg: CriticConfig, packed: bool) -> None:
        self.model, self.cfg, self.packed = model, cfg, packed
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                           weight_decay=cfg.weight_decay)

    def values(self, batch: RolloutBatch, width: int, device: torch.device, rl_cfg: RLConfig) -> torch.Tensor:
        """The values (B, width) of every sequence of `batch` at the current weights, no grad, on CPU."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return sequence_values(self.model, batch, range(len(batch)), width, device, self.packed,
                                       rl_cfg.micro_batch_tokens, rl_cfg.autocast).cpu()
        finally:
            self.model.train(was_training)

    def update(self, batch: RolloutBatch, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               rl_cfg: RLConfig, device: torch.device, step: int, seed: int) -> dict[str, float]:
        """rl.ppo_epochs x rl.mini_batches critic steps on the batch; returns their mean metrics."""
        rng = np.random.default_rng([seed, step, 23])
        means = RunningMeans()
        self.model.train()
        for index in mini_batch_indices(batch, rl_cfg.ppo_epochs, rl_cfg.mini_batches, rng):
            means.add(self._step(batch, index, old_values, returns, mask, rl_cfg, device))
        self.model.eval()
        return means.means()

    def _step(self, batch: RolloutBatch, index: list[int], old_values: torch.Tensor, returns: torch.Tensor,
              mask: torch.Tensor, rl_cfg: RLConfig, device: torch.device) -> dict[str, float]:
        """One AdamW step on the token-mean value loss of sequences `index`, over micro-batches."""
        cfg = self.cfg
        set_lr(self.optimizer, cfg.lr)
        width = mask.shape[1]
        total = float(mask[index].sum())
        sums = {M.CRITIC_VF_LOSS: 0.0, M.CRITIC_VF_CLIPFRAC: 0.0, M.CRITIC_VPRED_MEAN: 0.0}
        lengths = forward_lengths(self.model, batch, index, self.packed)
        for mb in micro_batches(lengths, rl_cfg.micro_batch_tokens):
            rows = [index[k] for k in mb]
            new = sequence_values(self.model, batch, rows, width, device, self.packed, 1 << 62,
                                  rl_cfg.autocast)
            m = mask[rows].to(device)
            loss, stats = algorithms.value_loss(new, old_values[rows].to(device), returns[rows].to(device), m,
                                                clip=cfg.value_clip)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return {M.CRITIC_SKIPPED_UPDATES: 1.0, M.CRITIC_LR: cfg.lr}
            weight = float(m.sum()) / max(total, 1.0)  # token-mean over the mini-batch
            (loss * weight).backward()
            sums[M.CRITIC_VF_LOSS] += weight * float(loss.detach())
            sums[M.CRITIC_VF_CLIPFRAC] += weight * float(stats["vf_clipfrac"])
            sums[M.CRITIC_VPRED_MEAN] += weight * float(stats["vpred_mean"])
        grad_norm, skipped = clip_and_step(self.model, self.optimizer, cfg.grad_clip)
        return {**sums, M.CRITIC_GRAD_NORM: grad_norm, M.CRITIC_LR: cfg.lr, M.CRITIC_SKIPPED_UPDATES: skipped}

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimizer state, for the RL checkpoint's trainer_state.pt."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def build_critic(cfg: CriticConfig, lm: nn.Module, packed: bool, seed: int) -> Critic:
    """The critic of a run: a value head on causal LM `lm`, the policy (a LoRA policy: its merged
    weights; the critic trains all of its own) or the model of critic.path, which the caller loads
    as it loads the policy, after check_critic_dir; packed: lm is rlvr's native model."""
    base = lora.merged_copy(lm) if lora.is_lora(lm) else lm
    return Critic(value_model(base, seed + 30_011), cfg, packed)
