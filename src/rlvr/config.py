"""One typed config tree for a run: dataclasses, YAML recipes, `key=value` overrides.

Units: a *prompt* is one problem; each RL step samples `rl.prompts_per_step` prompts and
`rl.group_size` completions per prompt, so one step has prompts_per_step x group_size rollouts.
Every batch size in this file counts either prompts or sequences and says which.

Unknown keys are errors with a "did you mean"; a value of the wrong type is an error naming the
key path, the value and the expected type. `derived_sizes()` lists what is computed from the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rlvr.errors import ConfigError
from rlvr.tasks import TaskError, class_default, factory, registered

LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) through peft: W x + (alpha / r) B A x on each target Linear,
    with W frozen and only A (r x in) and B (out x r, zero at the start) trained."""

    r: int = 16
    """Rank of the adapters."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / r) B A."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training (0: the learner's and the engine's log-probs agree)."""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_DEFAULT_TARGETS))
    """Names of the Linear layers that get adapters, matched as the last parts of a module name
    (peft's rule): the attention and MLP projections of every layer by default."""


@dataclass
class ModelConfig:
    path: str = ""
    """Local Hugging Face directory of the starting model. Empty: build one offline with `preset`."""
    preset: str = "tiny"
    """Model size built by `rlvr model init` when `path` is empty (see rlvr.models.PRESETS)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Parameter dtype of the learner and engine."""
    engine_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the rollout engine decodes in (bf16 weight copies: faster on CPUs with AMX and on GPUs;
    its log-probs then differ slightly from the fp32 learner's, which matters only with several
    updates per batch or rl.tis_cap)."""
    engine_workers: int = 0
    """Row chunks the torch engine decodes at once, in threads, each with one intra-op torch thread
    (a decode step's ops are too small for intra-op threads to pay: on 2 cores, one batch with 2
    threads decoded slower than with 1). 0: the run's `threads` (torch's thread count when threads
    is 0). 1: one batch with `threads` intra-op threads."""
    engine: Literal["torch", "vllm"] = "torch"
    """Rollout engine of the RL stage: rlvr's TorchEngine (shares the learner's weights) or vLLM in
    this process (decoding in engine_dtype, the learner's weights pushed after every update; needs
    vLLM installed, e.g. the .venv-vllm of `make test-vllm`). Evaluation stays on the torch engine."""
    impl: Literal["auto", "native", "hf"] = "auto"
    """Model code: `native` (rlvr's fast Qwen2/Llama implementation), `hf` (transformers), `auto`
    (native when the architecture is supported exactly, else hf)."""
    lora: LoRAConfig | None = None
    """LoRA adapters (needs `pip install rlvr[lora]`): SFT and RL train the adapters only, the base
    weights stay as loaded; checkpoints hold the adapter (checkpoint.merge_lora adds a merged model).
    null: full fine-tuning."""


@dataclass
class RewardFunctionConfig:
    function: str = ""
    """`path/to/file.py:name` or `module:name`: verl's compute_score or a TRL reward function."""
    weight: float = 1.0
    """Weight of this function's reward in the total."""


@dataclass
class SourceConfig:
    """One data source of a mixed run (data.task: mixed): the rows whose data_source is its name."""

    task: str = "generic"
    """The task that reads, prompts and scores the source's rows (a name or a spec, as data.task)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the source's task."""
    function: str = ""
    """A reward function added to the source's task reward (generic: the whole reward)."""
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    """Several weighted reward functions of the source, [{function: ..., weight: ...}]."""
    weight: float = 1.0
    """Sampling weight: the source's share of the RL prompts is weight / the sum of the weights."""


@dataclass
class DataConfig:
    task: str = "knights_knaves"
    """Task: a name (rlvr.tasks.TASKS; generic: rows scored by reward functions alone; an entry point
    of group rlvr.tasks) or a task from outside the package, `my_pkg.tasks:MyTask` or
    `path/to/file.py:MyTask` (docs/byo.md)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the task, e.g. {reward_scheme: logic_rl, response_prefix: "<think>"}."""
    row_prompt: Literal["keep", "task"] = "keep"
    """A data row whose `prompt` is a chat list (verl's rows): keep = prompt with it as given; task = the
    task renders the row's question in its own prompt (as for generated problems)."""
    prompt_template: str = ""
    """For a base model without a chat template (R1-Zero, TinyZero): the whole prompt as a format
    string with {question} (the last user message), e.g. "User: {question}\nAssistant: <think>".
    It ends with the task's response_prefix (the pre-fill the scorer assumes, "" by default) and
    replaces the tokenizer's chat template, also in checkpoints. Empty: the chat template."""
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    """With task `mixed`: data_source name -> {task, task_options, function(s), weight}. Each row of
    train_file / eval_file is read, prompted and scored by the task (and reward functions) of its
    data_source (else its `source`); a row of another source stops the run at start-up."""
    train_file: str = ""
    """JSONL/parquet of training problems. Empty: generate `train_size` problems."""
    train_size: int = 20000
    """Number of generated training problems (when train_file is empty)."""
    difficulty: dict[str, Any] | None = None
    """Difficulty of RL problems (task keywords, e.g. people: 3 or people: [3, 4]); rows of
    train_file are filtered by their metadata. null: the task's default_difficulty ({} without one)."""
    eval_file: str = ""
    """JSONL/parquet of held-out problems. Empty: generate `eval_size` with a disjoint seed."""
    eval_size: int = 256
    """Number of held-out problems."""
    eval_difficulty: dict[str, Any] | None = None
    """Difficulty of generated held-out problems; null: the task's default_difficulty."""
    max_prompt_tokens: int = 0
    """Longest prompt in tokens (chat template and response prefix included): training and held-out
    problems with a longer prompt are left out, and the count logged, as DeepScaleR's verl dataset
    does (data.max_prompt_length 1024). It also sizes vLLM's max_model_len (context_tokens()).
    0: no limit (vLLM then assumes prompts of up to 1024 tokens)."""
    require_files: bool = False
    """Refuse to start without train_file and eval_file instead of generating problems (recipes
    that reproduce a paper's data: generated toy problems would be a different experiment)."""


@dataclass
class SFTConfig:
    enabled: bool = True
    """Run cold-start SFT on the task's solver traces before RL."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences (prompt + trace) per optimizer step."""
    micro_batch_tokens: int = 16384
    """Token budget of one forward/backward; larger batches are accumulated."""
    autocast: Literal["none", "bfloat16"] = "none"
    """bfloat16: forward/backward matmuls in bf16 (torch.autocast, like TRL's bf16=True); the
    parameters, optimizer and loss stay in model.dtype. Faster on CPUs with bf16 matmul units; runs
    in float32 where bf16 matmuls are slower (measured once per process, logged)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 30
    """Linear warm-up steps, then cosine decay to min_lr_ratio * lr."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""
    data_size: int = 40000
    """Number of solver traces generated for SFT (sft.train_file: every row of the file is used)."""
    train_file: str = ""
    """JSONL/parquet of conversations to imitate instead of the task's solver traces: rows with
    `messages` (a chat list), `prompt` + `completion`, or ShareGPT `conversations` (from/value);
    the loss is on assistant turns only (docs/byo.md)."""
    max_seq_len: int = 0
    """Longer sequences are cut to this many tokens (their tail is not trained), counted as
    sft/truncated_fraction; 0: the model's max_position_embeddings."""
    difficulty: dict[str, Any] | None = None
    """Difficulty mix of SFT traces; null: the task's sft_difficulty, else its default_difficulty."""
    eval_every: int = 0
    """Greedy eval on a slice of the held-out set every N steps (0: only at the end)."""


@dataclass
class StageConfig:
    start_step: int = 0
    """The stage applies once start_step RL steps are done (from step start_step + 1; steps count 1..N)."""
    value: Any = None
    """The stage's value: a difficulty dict for `curriculum`, an int for `max_new_tokens_stages`
    and `group_size_stages`."""


@dataclass
class LengthRewardConfig:
    kind: Literal["none", "cosine", "overlong"] = "none"
    """Length shaping added to the task reward: cosine (Yeo et al.) or DAPO overlong penalty."""
    weight: float = 1.0
    """Weight of the length term in the total reward (cosine replaces the answer reward)."""
    cache_tokens: int = 0
    """DAPO L_cache (overlong): penalty ramps over the last cache_tokens before max_new_tokens."""
    correct_start: float = 2.0
    correct_end: float = 1.0
    wrong_start: float = -10.0
    wrong_end: float = 0.0
    exceed_penalty: float = -10.0


@dataclass
class RLConfig:
    enabled: bool = True
    """Run the RL stage."""
    steps: int = 150
    """RL steps (one step = generate, score, update on prompts_per_step x group_size rollouts)."""
    prompts_per_step: int = 16
    """Prompts sampled per step."""
    group_size: int = 8
    """Completions per prompt (G)."""
    mini_batches: int = 1
    """Optimizer steps per PPO epoch; prompts_per_step must be divisible by it."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    micro_batch_tokens: int = 16384
    """Token budget of one forward/backward inside a mini-batch (native model: completion tokens;
    each distinct prompt of a micro-batch is computed once)."""
    autocast: Literal["none", "bfloat16"] = "none"
    """bfloat16: the update's forward/backward matmuls in bf16 (torch.autocast); the parameters,
    optimizer, log-probs and loss stay float32."""
    update_workers: int = 0
    """Threads that compute an optimizer step's micro-batch gradients at once, each with one
    intra-op torch thread, summed in a fixed order (with one micro-batch there is nothing to split).
    0: the run's threads on a CPU. 1: one after another with `threads` intra-op threads."""
    advantage: str = "grpo"
    """Advantage estimator (rlvr.algorithms.ADVANTAGES)."""
    advantage_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword options of the estimator (e.g. eps, gamma)."""
    loss: str = "ppo"
    """Policy loss (rlvr.algorithms.POLICY_LOSSES)."""
    loss_agg: str = "token-mean"
    """Loss aggregation (rlvr.algorithms.AGGREGATIONS)."""
    clip_low: float | None = None
    """Lower clip epsilon; null: the loss's default (ppo 0.2, gspo 3e-4; cispo has none)."""
    clip_high: float | None = None
    """Upper clip epsilon; null: the loss's default (ppo 0.2, gspo 4e-4, cispo 0.28).
    DAPO clip-higher: 0.28."""
    dual_clip: float | None = None
    """Dual-clip constant c for negative advantages (3.0 in verl); null disables."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up, to min_lr_ratio * lr at the last step."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    """AdamW weight decay (verl and Logic-RL: 0.01)."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW (beta1, beta2) (verl and Logic-RL: [0.9, 0.999])."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""
    kl_coef: float = 0.0
    """KL to the reference model; 0 means no reference model is loaded."""
    ref_sync_every: int = 0
    """Every this many RL steps the reference moves toward the policy: ref <- alpha x policy +
    (1 - alpha) x ref, alpha = rl.ref_sync_alpha (TRL's sync_ref_model; TR-DPO). The anchor then
    holds the policy near where it was lately, not where it started. 0: a frozen reference."""
    ref_sync_alpha: float = 1.0
    """The share of the policy in the reference after a sync (1: a copy of the policy)."""
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False
    """Subtract the KL from token rewards (REINFORCE++ style) instead of adding a KL loss."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0: off, as in verl)."""
    top_entropy_fraction: float = 1.0
    """Policy gradient on this fraction of each batch's loss tokens only, highest entropy first
    (Wang et al. 2025 keep 0.2): the other tokens' advantages are set to 0; the KL and entropy
    terms and the aggregation's token counts keep every token. Below 1 it costs one no-grad
    forward of the batch before the update. 1: every token."""
    temperature: float = 1.0
    """Sampling temperature at the first step."""
    final_temperature: float | None = None
    """When set, the temperature moves linearly to this value at the last step."""
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 320
    """Completion token limit (overridden by max_new_tokens_stages)."""
    zero_variance: Literal["keep", "mask", "dynamic_sampling"] = "keep"
    """Groups whose rewards are all equal: keep them (their GRPO advantage is 0), mask them from
    the loss, or refill the batch with groups that have variance (DAPO dynamic sampling)."""
    max_refill_rounds: int = 3
    """Extra generation rounds allowed per step for dynamic sampling."""
    curriculum: list[StageConfig] = field(default_factory=list)
    """Difficulty by step range,
    e.g. [{start_step: 0, value: {people: 3}}, {start_step: 100, value: {people: 4}}]."""
    max_new_tokens_stages: list[StageConfig] = field(default_factory=list)
    """Context lengthening by step range (DeepScaleR 8K -> 16K -> 24K)."""
    group_size_stages: list[StageConfig] = field(default_factory=list)
    """Samples per prompt by step range."""
    length_reward: LengthRewardConfig = field(default_factory=LengthRewardConfig)
    collapse_patience: int = 0
    """Stop RL early (saving a checkpoint) when the batch accuracy stays below half of its best for
    this many consecutive steps (0: never)."""
    partial_tokens_per_step: int = 0
    """Partial rollouts: tokens each unfinished sequence may generate per step (0: off); groups whose
    samples have not all finished continue in the next step (rlvr.rollout.partial)."""
    tis_cap: float | None = None
    """Truncated importance sampling: scale each token's advantage by min(pi_learner / pi_rollout, tis_cap),
    correcting engine/learner log-prob mismatch (vLLM) and stale partial-rollout tokens; null: off."""
    fork_points: int = 0
    """Tree sampling (0: off): each group is group_size / (1 + fork_points x fork_samples) roots
    sampled from the prompt; each root is forked at its fork_points least likely sampled tokens
    (its last excluded), fork_samples continuations per point, resampled from that token on. A
    fork reuses the root's prefix (those tokens are not generated again). rl.advantage=prefix_tree
    credits the forked token by what the continuations went on to score."""
    fork_samples: int = 1
    """Continuations per fork point (rl.fork_points)."""
    shuffle_rewards: bool = False
    """Placebo control: permute each group's rewards among its samples before the advantages (a
    pure function of seed and step). The update has the same noise as the real run's and none of
    its signal; run it next to a real run to tell learning from drift. summary.json and
    report.html mark such a run as a control. Logged rewards and accuracies stay the real ones."""


@dataclass
class CriticConfig:
    """PPO's value model (rlvr.trainers.critic), used by rl.advantage=gae and only by it."""

    enabled: bool = False
    """Train a critic and compute GAE advantages from its values (rl.advantage must be gae)."""
    path: str = ""
    """Local HF model directory whose backbone starts the critic (its vocabulary must be the
    policy's). Empty: a copy of the policy at the start of RL (after SFT), as verl and OpenRLHF do.
    Either way the LM head is replaced by a fresh linear value head."""
    lr: float = 1e-4
    """Learning rate of the critic's own AdamW (constant)."""
    warmup_steps: int = 0
    """RL steps at the start in which only the critic is updated and the actor does not move
    (verl's trainer.critic_warmup), so that its first advantages come from a trained value."""
    value_clip: float | None = 0.5
    """PPO value clipping: the value moves at most this far from its pre-update prediction per
    step, in reward units (verl's cliprange_value 0.5); null: the plain squared error."""
    weight_decay: float = 0.0
    """AdamW weight decay of the critic."""
    grad_clip: float = 1.0
    """Max global gradient norm of a critic step (0 disables)."""


@dataclass
class EvalConfig:
    greedy: bool = True
    """Evaluate with one greedy completion per problem."""
    samples: int = 4
    """Completions per problem for the sampled evaluation (0: skip it)."""
    temperature: float = 1.0
    """Temperature of the sampled evaluation."""
    top_p: float = 1.0
    max_new_tokens: int = 320
    k_values: list[int] = field(default_factory=lambda: [1])
    """k of pass@k and maj@k reported by the sampled evaluation."""
    every: int = 0
    """The learning curve: every N RL steps (and before the first), sampled accuracy on a fixed
    held-out slice (curve_size problems x curve_samples samples at eval.temperature, one sampling
    seed for every point), logged to metrics.jsonl as phase "rl_eval" with step = RL steps done
    and plotted in report.html with the training reward. 0: only the before / after RL evals."""
    curve_size: int = 64
    """Held-out problems of each curve point (the first curve_size of the held-out set)."""
    curve_samples: int = 2
    """Samples per problem of each curve point."""
    prompts_per_batch: int = 128


@dataclass
class CheckpointConfig:
    every: int = 50
    """Save every N steps of each stage (0: only at the end of the stage)."""
    keep_last: int = 2
    """Checkpoints kept per stage."""
    merge_lora: bool = False
    """With model.lora: each checkpoint also holds merged/, the adapter folded into the base
    weights as a plain HF model directory (loadable by transformers and vLLM)."""


@dataclass
class LoggingConfig:
    progress: bool = True
    """Live progress line on the terminal."""
    samples_every: int = 10
    """Dump the step's completions to samples/ every N RL steps (0: never)."""
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "rlvr"


@dataclass
class RewardConfig:
    function: str = ""
    """One reward function added to the task's reward (see docs/byo.md); empty: none."""
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    """Several weighted reward functions, [{function: ..., weight: ...}]."""
    timeout_seconds: float = 10.0
    """Deadline of one reward-function call (it runs in a killable worker process)."""
    error_reward: float = 0.0
    """Reward of a call that raises, hangs or returns a non-number."""


# Resources Ray names itself; ray.resources_per_* take only custom ones.
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass
class RayConfig:
    """Settings of `distributed: ray`: the run config's `ray:` section (used by rlvr.distributed)."""

    address: str = ""
    """Ray cluster to join: "" starts a local one on this machine, "auto" joins the cluster this
    node belongs to (`ray start --head` / `ray start --address=...`), "host:6379" a given head."""
    num_rollout_workers: int = 2
    """Rollout worker actors; the step's prompts are split evenly between them."""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved by each rollout worker."""
    gpus_per_worker: float = 0.0
    """Ray GPUs reserved by each rollout worker (a fraction shares a GPU); > 0 puts its engine on CUDA."""
    threads_per_worker: int = 1
    """torch CPU threads in each rollout worker (0: torch's default)."""
    rollout_engine: Literal["torch", "vllm"] = "torch"
    """Engine inside each worker: rlvr's TorchEngine (CPU or GPU) or vLLM (GPU)."""
    engine_options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of that engine (e.g. vLLM: gpu_memory_utilization, dtype, max_model_len)."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each rollout worker reserves, e.g. {rollout: 1}: the workers then run only
    on nodes started with that resource (`ray start --resources='{"rollout": 8}'`). Names other than
    CPU, GPU, memory and object_store_memory (those have their own keys); amounts > 0."""
    spread: bool = False
    """Place workers on different nodes when possible (Ray's SPREAD scheduling)."""
    num_learners: int = 0
    """Learner rank actors; 0 keeps the learner in the driver process (the CPU default)."""
    learner_strategy: Literal["fsdp", "replicate"] = "fsdp"
    """How learner ranks combine gradients: FSDP2 sharding, or full replicas with an all-reduce."""
    cpus_per_learner: float = 1.0
    """Ray CPUs reserved by each learner rank."""
    gpus_per_learner: float = 0.0
    """Ray GPUs reserved by each learner rank; > 0 puts it on CUDA."""
    resources_per_learner: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each learner rank reserves, e.g. {learner: 1} for nodes started with
    `ray start --resources='{"learner": 8}'` (as resources_per_worker)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (learner ranks)."""


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    """Run directory (config.yaml, metrics.jsonl, checkpoints/, eval/, report.html, summary.json)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    """torch CPU threads of this process. 0: one per core it may run on (its CPU affinity), which
    is not torch's own default (one per physical core, or OMP_NUM_THREADS). Set it to 1 or 2 on a
    machine shared with other jobs."""
    distributed: Literal["none", "ray"] = "none"
    """Backend for multi-process runs; none runs everything in this process."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    """PPO's value model (rl.advantage=gae)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward functions from outside the package (docs/byo.md)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Workers and learners of `distributed: ray` (see docs/scale-out.md)."""

    def validate(self) -> RunConfig:
        """Every field's domain (DOMAINS), then cross-field checks; raises ConfigError naming the key."""
        check_domains(self)
        self._validate_sources()
        if self.data.prompt_template:
            from rlvr.models.chat import PromptTemplateError, check_prompt_template

            try:
                check_prompt_template(self.data.prompt_template)
            except PromptTemplateError as error:
                raise ConfigError(f"config key data.prompt_template: {error}",
                                  key="data.prompt_template") from None
        self._resolve_task_defaults()
        rl, sft = self.rl, self.sft
        _check(rl.steps >= 0, "rl.steps", rl.steps, "an integer >= 0")
        _check(rl.prompts_per_step > 0, "rl.prompts_per_step", rl.prompts_per_step, "a positive integer")
        _check(rl.group_size > 0, "rl.group_size", rl.group_size, "a positive integer")
        _check(rl.mini_batches > 0 and rl.prompts_per_step % rl.mini_batches == 0, "rl.mini_batches",
               rl.mini_batches, f"a positive divisor of rl.prompts_per_step ({rl.prompts_per_step})")
        _check(rl.ppo_epochs > 0, "rl.ppo_epochs", rl.ppo_epochs, "a positive integer")
        _check(0 < rl.top_p <= 1, "rl.top_p", rl.top_p, "a number in (0, 1]")
        _check(rl.temperature > 0, "rl.temperature", rl.temperature, "a positive number")
        _check(rl.max_new_tokens > 0, "rl.max_new_tokens", rl.max_new_tokens, "a positive integer")
        _check(rl.lr > 0 and sft.lr > 0, "rl.lr / sft.lr", (rl.lr, sft.lr), "positive numbers")
        _check(sft.batch_size > 0, "sft.batch_size", sft.batch_size, "a positive integer")
        for key in ("curriculum", "max_new_tokens_stages", "group_size_stages"):
            starts = [stage.start_step for stage in getattr(rl, key)]
            _check(starts == sorted(starts) and len(set(starts)) == len(starts), f"rl.{key}", starts,
                   "stages with strictly increasing start_step")
            if key != "curriculum":
                for stage in getattr(rl, key):
                    _check(isinstance(stage.value, int) and stage.value > 0, f"rl.{key}.value", stage.value,
                           "a positive integer")
            else:
                for stage in rl.curriculum:
                    _check(isinstance(stage.value, dict), "rl.curriculum.value", stage.value,
                           "a difficulty mapping such as {people: 4}")
        if rl.length_reward.kind == "overlong":
            _check(0 < rl.length_reward.cache_tokens <= rl.max_new_tokens, "rl.length_reward.cache_tokens",
                   rl.length_reward.cache_tokens, "0 < cache_tokens <= rl.max_new_tokens")
        _check(rl.partial_tokens_per_step >= 0, "rl.partial_tokens_per_step",
               rl.partial_tokens_per_step, ">= 0")
        _check(rl.tis_cap is None or rl.tis_cap > 0, "rl.tis_cap", rl.tis_cap, "null or a positive number")
        _check(rl.ref_sync_every == 0 or rl.kl_coef > 0, "rl.ref_sync_every", rl.ref_sync_every,
               "0 when rl.kl_coef is 0 (there is no reference to sync)")
        if rl.fork_points:
            per_root = 1 + rl.fork_points * rl.fork_samples
            for size in [rl.group_size] + [int(stage.value) for stage in rl.group_size_stages]:
                _check(size % per_root == 0, "rl.fork_points", rl.fork_points,
                       f"a number of fork points whose group of 1 + fork_points x fork_samples = {per_root} "
                       f"samples per root divides rl.group_size and every rl.group_size_stages value "
                       f"({size} does not)")
            _check(rl.partial_tokens_per_step == 0, "rl.fork_points", rl.fork_points,
                   "0 with partial rollouts (rl.partial_tokens_per_step > 0): a fork needs its root finished")
        self._validate_critic()
        self._validate_advantage_options()
        self._validate_engine_context()
        self._validate_lora()
        _check(self.ray.num_rollout_workers >= 1, "ray.num_rollout_workers",
               self.ray.num_rollout_workers, ">= 1")
        _check(self.ray.num_learners >= 0, "ray.num_learners", self.ray.num_learners, ">= 0")
        _check(self.eval.samples >= 0, "eval.samples", self.eval.samples, "an integer >= 0")
        _check(self.eval.every >= 0, "eval.every", self.eval.every, "an integer >= 0")
        _check(self.eval.curve_size >= 1, "eval.curve_size", self.eval.curve_size, "a positive integer")
        _check(self.eval.curve_samples >= 1, "eval.curve_samples", self.eval.curve_samples,
               "a positive integer")
        _check(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", self.checkpoint.keep_last, ">= 1")
        return self

    def _validate_sources(self) -> None:
        """task mixed <=> data.sources; each source's task imports and its weight is positive."""
        data = self.data
        _check(data.task != "mixed" or bool(data.sources), "data.task", data.task,
               "a task other than mixed, or data.sources (mixed routes rows to the tasks of their sources)")
        _check(data.task == "mixed" or not data.sources, "data.sources", sorted(data.sources),
               "no sources unless data.task is mixed")
        for name, source in data.sources.items():
            _check(source.weight > 0, f"data.sources.{name}.weight", source.weight, "a positive number")
            _check(source.task != "mixed", f"data.sources.{name}.task", source.task,
                   "a task other than mixed")
            try:
                factory(source.task)
            except TaskError as error:
                raise ConfigError(f"config key data.sources.{name}.task: {error}",
                                  key=f"data.sources.{name}.task") \
                    from None

    def _resolve_task_defaults(self) -> None:
        """Difficulties left null take the task's class defaults (default_difficulty, sft_difficulty),
        so the resolved config.yaml says what a run generates; importing the task here also makes
        a task spec that does not import fail at load time, naming data.task."""
        data, sft = self.data, self.sft
        if data.difficulty is not None and data.eval_difficulty is not None and sft.difficulty is not None:
            return
        try:
            default = dict(class_default(data.task, "default_difficulty", {}))
            sft_default = dict(class_default(data.task, "sft_difficulty", default))
        except TaskError as error:
            raise ConfigError(f"config key data.task: {error}", key="data.task") from None
        data.difficulty = default if data.difficulty is None else data.difficulty
        data.eval_difficulty = dict(default) if data.eval_difficulty is None else data.eval_difficulty
        sft.difficulty = sft_default if sft.difficulty is None else sft.difficulty

    def _validate_critic(self) -> None:
        """GAE needs a critic and a critic needs GAE; the data-parallel learner has no critic."""
        rl, critic = self.rl, self.critic
        _check(critic.enabled or rl.advantage != "gae", "rl.advantage", rl.advantage,
               "an estimator without a value model, or critic.enabled=true (gae needs a critic)")
        if not critic.enabled:
            return
        _check(rl.advantage == "gae", "critic.enabled", critic.enabled,
               f"false with rl.advantage={rl.advantage!r} (only gae uses the critic's values)")
        _check(self.distributed != "ray" or self.ray.num_learners == 0, "critic.enabled", critic.enabled,
               f"false with ray.num_learners={self.ray.num_learners}: the data-parallel learner has no "
               "critic; use ray.num_learners=0 (the update runs in the driver) or a critic-free estimator")
        _check(critic.lr > 0, "critic.lr", critic.lr, "a positive number")
        _check(0 <= critic.warmup_steps < max(rl.steps, 1), "critic.warmup_steps", critic.warmup_steps,
               f"an integer in [0, rl.steps) (rl.steps is {rl.steps})")
        _check(critic.value_clip is None or critic.value_clip > 0, "critic.value_clip", critic.value_clip,
               "null or a positive number")
        _check(critic.grad_clip >= 0, "critic.grad_clip", critic.grad_clip, "a number >= 0")
        unknown = sorted(set(rl.advantage_options) - {"gamma", "lam"})
        _check(not unknown, "rl.advantage_options", rl.advantage_options,
               "gae's options gamma and lam only (kl and values come from the trainer)")
        for key in ("gamma", "lam"):
            value = rl.advantage_options.get(key, 1.0)
            _check(isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1,
                   f"rl.advantage_options.{key}", value, "a number in [0, 1]")

    def _validate_advantage_options(self) -> None:
        """rl.advantage_options holds the estimator's own keyword options only; the per-token
        inputs (values, kl, kl_coef, tokens) come from the trainer. gae's are checked with the critic."""
        rl = self.rl
        if rl.advantage == "gae":
            return
        fn = importlib.import_module("rlvr.algorithms").ADVANTAGES[rl.advantage]
        supplied = {"values", "kl", "kl_coef", "tokens"}
        accepted = sorted(name for name, p in inspect.signature(fn).parameters.items()
                          if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in supplied)
        unknown = sorted(set(rl.advantage_options) - set(accepted))
        _check(not unknown, "rl.advantage_options", rl.advantage_options,
               f"only {rl.advantage}'s own options ({', '.join(accepted) or 'none'}); "
               f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not one")

    def context_tokens(self) -> int:
        """The longest sequence an RL rollout may hold: data.max_prompt_tokens (1024 when 0) plus the
        largest completion budget of rl.max_new_tokens and rl.max_new_tokens_stages. vLLM engines
        are sized to it (max_model_len)."""
        rl = self.rl
        completion = max([rl.max_new_tokens] + [int(s.value) for s in rl.max_new_tokens_stages])
        return (self.data.max_prompt_tokens or 1024) + completion

    def _validate_engine_context(self) -> None:
        """A vLLM max_model_len set in ray.engine_options must hold the longest rollout."""
        length = self.ray.engine_options.get("max_model_len")
        if self.distributed != "ray" or self.ray.rollout_engine != "vllm" or length is None:
            return
        need = self.context_tokens()
        _check(isinstance(length, int) and length >= need, "ray.engine_options.max_model_len", length,
               f"an integer >= {need}: data.max_prompt_tokens "
               f"({self.data.max_prompt_tokens or '0, so 1024'}) + the largest completion budget of "
               "rl.max_new_tokens and rl.max_new_tokens_stages; or leave it out, and the workers are "
               "sized to exactly that")
    def _validate_lora(self) -> None:
        """LoRA runs in one process (the Ray learner and workers exchange full weights)."""
        lora = self.model.lora
        _check(not self.checkpoint.merge_lora or lora is not None, "checkpoint.merge_lora", True,
               "false without model.lora (a full-weight checkpoint already is an HF model)")
        if lora is None:
            return
        _check(self.distributed == "none", "model.lora", dataclasses.asdict(lora),
               "null with distributed=ray (its learner ranks and rollout workers exchange full weights)")

    def derived_sizes(self) -> dict[str, int]:
        """Batch sizes computed from the rest, in prompts or sequences (the names say which). The
        per-step sizes are the first step's; group_size_stages changes them at their start_step
        (listed), and total_rl_rollouts walks every step through those stages."""
        rl = self.rl
        rollouts = rl.prompts_per_step * rl.group_size
        sizes = {
            "rollouts_per_step (prompts_per_step x group_size)": rollouts,
            "prompts_per_mini_batch": rl.prompts_per_step // rl.mini_batches,
            "sequences_per_mini_batch": rollouts // rl.mini_batches,
            "optimizer_steps_per_rl_step (mini_batches x ppo_epochs)": rl.mini_batches * rl.ppo_epochs,
        }
        for stage in rl.group_size_stages:
            sizes[f"rollouts_per_step from step {stage.start_step + 1} (group_size {stage.value})"] = (
                rl.prompts_per_step * int(stage.value))
        sizes["total_rl_rollouts (through group_size_stages)"] = sum(
            rl.prompts_per_step * int(stage_value(rl.group_size_stages, step, rl.group_size))
            for step in range(rl.steps if rl.enabled else 0))
        sizes["sft_sequences_total (steps x batch_size)"] = (self.sft.steps * self.sft.batch_size
                                                             if self.sft.enabled else 0)
        return sizes


def stage_value(stages: list[StageConfig], step: int, default: Any) -> Any:
    """The value of the last stage whose start_step <= step (steps done, 0-based), else default."""
    value = default
    for stage in stages:
        if stage.start_step <= step:
            value = stage.value
    return value


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key}: got {value!r}, expected {expected}", key=key.split(" ")[0])


# ---------------------------------------------------------------------------------------------
# Domains: the values each field accepts beyond its type. A field not named in DOMAINS gets its
# type's default domain (_DEFAULT_DOMAINS: an integer >= 0, a finite number); str, bool, Literal,
# dict and Any fields accept every value of their type. Names that pick a function from a table
# (rl.advantage, rl.loss, data.task, ...) are checked against that table, with a "did you mean".


@dataclass(frozen=True)
class Domain:
    accepts: Callable[[Any], bool]
    text: str
    """What is expected, as the error message says it."""
    names: Callable[[], Any] | None = None
    """For a name field: the table's names (imported on use), offered as "did you mean"."""


def at_least(low: float, text: str | None = None) -> Domain:
    return Domain(lambda v: v >= low,
                  text or (f"an integer >= {low}" if isinstance(low, int) else f"a number >= {low}"))


def positive(kind: str = "integer") -> Domain:
    return Domain(lambda v: v > 0, f"a positive {kind}")


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Domain:
    def accepts(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Domain(accepts, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def name_in(table: Callable[[], Any], what: str) -> Domain:
    return Domain(lambda v: v in table(), what, names=table)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _table(module: str, name: str) -> Callable[[], Any]:
    def names() -> list[str]:
        return sorted(getattr(importlib.import_module(module), name))

    return names


def _custom_resources(table: dict) -> bool:
    return all(isinstance(name, str) and name.strip() and name not in BUILTIN_RESOURCES
               and isinstance(amount, int | float) and not isinstance(amount, bool)
               and 0 < amount < float("inf")
               for name, amount in table.items())


_RESOURCES = Domain(_custom_resources,
                    f"custom Ray resource names (not {', '.join(BUILTIN_RESOURCES)}: those have "
                    "their own keys) mapped to amounts > 0, e.g. {rollout: 1}")


def _task_names() -> list[str]:
    return sorted(registered())


_BETAS = Domain(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), [beta1, beta2]")
_DEFAULT_DOMAINS: dict[Any, Domain] = {int: at_least(0), float: Domain(_finite, "a finite number")}
DOMAINS: dict[str, Domain] = {
    "seed": Domain(lambda _: True, "an integer"),
    "out_dir": Domain(lambda v: bool(v.strip()), "a directory path"),
    "threads": at_least(0, "an integer >= 0 (0: all cores)"),
    "model.preset": name_in(_table("rlvr.models.factory", "PRESETS"), "a model preset"),
    "model.engine_workers": at_least(0),
    "rl.update_workers": at_least(0),
    "data.task": Domain(lambda v: v in _task_names() or ":" in v, "a task name or a spec 'module:Class' / "
                        "'path/to/file.py:Class'", names=lambda: _task_names()),
    "data.train_size": positive(),
    "data.eval_size": positive(),
    "sft.batch_size": positive(),
    "sft.micro_batch_tokens": positive(),
    "sft.lr": positive("number"),
    "sft.min_lr_ratio": in_range(0, 1),
    "sft.weight_decay": at_least(0.0),
    "sft.adam_betas": _BETAS,
    "sft.grad_clip": at_least(0.0),
    "sft.data_size": positive(),
    "model.lora.r": positive(),
    "model.lora.alpha": positive("number"),
    "model.lora.dropout": in_range(0, 1, high_open=True),
    "model.lora.target_modules": Domain(lambda v: bool(v) and all(isinstance(t, str) and t for t in v),
                                        "a non-empty list of module names, e.g. [q_proj, v_proj]"),
    "rl.prompts_per_step": positive(),
    "rl.group_size": positive(),
    "rl.mini_batches": positive(),
    "rl.ppo_epochs": positive(),
    "rl.micro_batch_tokens": positive(),
    "rl.advantage": name_in(_table("rlvr.algorithms", "ADVANTAGES"), "an advantage estimator"),
    "rl.loss": name_in(_table("rlvr.algorithms", "POLICY_LOSSES"), "a policy loss"),
    "rl.loss_agg": name_in(_table("rlvr.algorithms", "AGGREGATIONS"), "a loss aggregation"),
    "rl.clip_low": at_least(0.0),
    "rl.clip_high": at_least(0.0),
    "rl.dual_clip": Domain(lambda v: v > 1, "null or a number > 1"),
    "rl.lr": positive("number"),
    "rl.min_lr_ratio": in_range(0, 1),
    "rl.weight_decay": at_least(0.0),
    "rl.adam_betas": _BETAS,
    "rl.grad_clip": at_least(0.0),
    "rl.kl_coef": at_least(0.0),
    "rl.ref_sync_alpha": in_range(0, 1, low_open=True),
    "rl.entropy_coef": at_least(0.0),
    "rl.top_entropy_fraction": in_range(0, 1, low_open=True),
    "rl.temperature": positive("number"),
    "rl.final_temperature": positive("number"),
    "rl.top_p": in_range(0, 1, low_open=True),
    "rl.max_new_tokens": positive(),
    "rl.tis_cap": positive("number"),
    "rl.fork_samples": positive(),
    "rl.length_reward.weight": Domain(_finite, "a finite number"),
    "eval.temperature": at_least(0.0),
    "eval.top_p": in_range(0, 1, low_open=True),
    "eval.max_new_tokens": positive(),
    "eval.k_values": Domain(lambda v: bool(v) and all(k > 0 for k in v),
                            "a non-empty list of positive integers"),
    "eval.prompts_per_batch": positive(),
    "checkpoint.keep_last": at_least(1),
    "ray.num_rollout_workers": at_least(1),
    "ray.cpus_per_worker": at_least(0.0),
    "ray.gpus_per_worker": at_least(0.0),
    "ray.cpus_per_learner": at_least(0.0),
    "ray.gpus_per_learner": at_least(0.0),
    "ray.resources_per_worker": _RESOURCES,
    "ray.resources_per_learner": _RESOURCES,
}


def check_domains(config: Any, prefix: str = "") -> None:
    """Check every field of a config tree against its domain; raises ConfigError naming the key."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        path = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_domains(value, path + ".")
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_domains(item, f"{path}[{i}].")
            continue
        if isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            for name, item in value.items():
                check_domains(item, f"{path}.{name}.")
            continue
        if value is None:
            continue
        generic = _generic_path(path)
        domain = DOMAINS.get(generic)
        if domain is None:
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            domain = _DEFAULT_DOMAINS.get(args[0]
                                          if typing.get_origin(tp) in (Union, types.UnionType) else tp)
        if domain is None or domain.accepts(value):
            continue
        message = f"config key {path}: got {value!r}, expected {domain.text}"
        if domain.names is not None:
            valid = domain.names()
            close = difflib.get_close_matches(str(value), valid, n=1)
            message += (f"; did you mean {close[0]!r}?" if close else "") + f" (valid: {', '.join(valid)})"
        raise ConfigError(message, key=path)


def _generic_path(path: str) -> str:
    """rl.curriculum[2].start_step -> rl.curriculum.start_step (the DOMAINS key)."""
    return re.sub(r"\[\d+\]", "", path)


# ---------------------------------------------------------------------------------------------
# Loading: YAML + overrides -> raw dict -> typed tree (with checks at every key)


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe (optional), apply `key=value` overrides, type-check and validate.

    An error about a value names where it came from: the override that set it, or the recipe's
    file and line."""
    raw: dict[str, Any] = {}
    source, lines = "", {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            text = path.read_text()
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path} must be a mapping of keys, got {type(loaded).__name__}")
        raw, source, lines = loaded, str(path), _key_lines(yaml.compose(text))
    set_by: dict[str, str] = {}
    for item in overrides:
        try:
            apply_override(raw, item)
        except ConfigError as err:
            raise (err if str(err).startswith("override")
                   else ConfigError(f"override {item}: {err}")) from None
        set_by[item.partition("=")[0].strip()] = item
    try:
        return from_dict(RunConfig, raw, "").validate()
    except ConfigError as err:
        raise ConfigError(f"{_origin(err.key, set_by, lines, source)}: {err}", key=err.key) from None


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """Dotted key path -> 1-based line of the key in a composed YAML mapping."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}{key_node.value}"
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path + "."))
    return out


def _origin(key: str | None, set_by: dict[str, str], lines: dict[str, int], source: str) -> str:
    """Where the value of `key` came from: "override K=V", "RECIPE line N", else the recipe (a default)."""
    parts = _generic_path(key).split(".") if key else []
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in set_by:
            return f"override {set_by[prefix]}"
        if prefix in lines:
            return f"{source} line {lines[prefix]}"
    return source or "config"


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `a.b.c=value` to a raw config dict; the value is parsed as YAML
    (`[3, 4]`, `null`, `{people: 4}`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. rl.lr=1e-6)")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    _resolve_field(RunConfig, parts)  # raises on unknown keys, with a suggestion
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an optional section set to null (model.lora: null)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping in the recipe")
    node[parts[-1]] = value


def _resolve_field(cls: type, parts: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(_unknown_key_message(".".join(parts[: i + 1]), part, names))
        target = _section(hints[part])
        if dataclasses.is_dataclass(target):
            cls, hints = target, typing.get_type_hints(target)  # type: ignore[assignment]
        elif i < len(parts) - 1:
            if typing.get_origin(target) is dict:
                return  # free-form mapping (task options, difficulty): any sub-key
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])} is a value, not a section")


def _section(tp: Any) -> Any:
    """The dataclass of an optional section (`LoRAConfig | None` -> LoRAConfig); other types as given."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        classes = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(classes) == 1:
            return classes[0]
    return tp


def _unknown_key_message(path: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    hint = f"; did you mean {parent + close[0]!r}?" if close else ""
    return f"unknown config key {path!r}{hint} (valid here: {', '.join(valid)})"


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a raw mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {path or '<root>'}: expected a mapping, got {data!r}", key=path)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(_unknown_key_message(full, str(key), names), key=full)
        kwargs[key] = _convert(hints[key], value, full)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:  # noqa: C901 - one branch per kind of type
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1
                          else f"config key {path}: got {value!r}, expected {tp}", key=path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key {path}: got {value!r}, expected one of "
                              f"{', '.join(map(repr, choices))}", key=path)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {path}: got {value!r}, expected a list", key=path)
        (item_type,) = typing.get_args(tp)
        return [_convert(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path}: got {value!r}, expected a mapping", key=path)
        item_type = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        if dataclasses.is_dataclass(item_type):  # name -> section (data.sources)
            return {str(k): from_dict(item_type, v, f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path}: got {value!r}, expected true or false", key=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {path}: got {value!r}, expected an integer", key=path)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {path}: got {value!r}, expected a number", key=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {path}: got {value!r}, expected a string", key=path)
        return value
    raise ConfigError(f"config key {path}: unsupported type {tp}", key=path)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)
