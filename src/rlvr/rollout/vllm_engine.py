"""Rollouts with vLLM on a GPU, behind the RolloutEngine protocol (optional extra: pip install 'rlvr[vllm]').

vllm is imported inside this module's functions only, so `import rlvr` (and this module) works
without it. Verified status: written against vLLM's public API (LLM, SamplingParams with
logprobs, LLM.collective_rpc with a worker extension class, LLM.sleep / wake_up); its tests are
marked `gpu` (tests/gpu/) and have not run in the CPU-only environment this was written in.

    engine = VLLMEngine("runs/x/model_init", eos_token_ids=eos, gpu_memory_utilization=0.4,
                        enable_sleep_mode=True)
    rollouts = engine.generate(prompt_ids, params)   # token ids in, token ids + log-probs out
    engine.sleep()                                   # free the KV cache (and offload weights) for training
    engine.load_weights(policy.state_dict())         # wakes the weights, loads, the KV cache wakes on generate

Log-probs: the engine asks vLLM for the sampled token's log-prob (SamplingParams(logprobs=0)) in
`processed_logprobs` mode, i.e. after temperature, which matches rlvr's Rollout.logprobs
(log_softmax(logits / T)) when top_p == 1 and top_k == 0. With top-p / top-k vLLM reports log-probs
renormalised over the kept tokens, which differ from the learner's; the RL loop measures that
mismatch every step (rlvr.rollout.partial.logprob_mismatch) and can correct it with truncated
importance weights.

Weights. Colocated (vLLM in the learner's process, same GPU): the engine runs vLLM's engine core in
this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so load_weights hands the learner's tensors to the
model's own `load_weights` through `collective_rpc` without any copy through host memory. On
other GPUs (rollout workers as Ray actors, rlvr.distributed.ray_engine): the learner's state dict
arrives through the Ray object store and is loaded the same way inside the worker; or, for the
fastest path between GPUs, `init_weight_broadcast` joins vLLM's workers and the learner's rank 0 in
an NCCL group (vLLM's StatelessProcessGroup + PyNcclCommunicator) and `WeightBroadcaster.send`
broadcasts each tensor from the learner, which the workers load as it arrives.

Sleep mode (enable_sleep_mode=True): sleep(level=1) offloads weights to CPU and drops the KV cache,
so the learner can use the GPU memory between generations; level 2 drops the weights too (right
when load_weights follows every update anyway).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from rlvr.rollout.base import Rollout, SamplingParams

WORKER_EXTENSION = "rlvr.rollout.vllm_engine.RlvrWorkerExtension"


def _mix_seed(seed: int, prompt: int, sample: int) -> int:
    return (seed * 1_000_003 + prompt * 7919 + sample * 104_729) % (2**31 - 1)


class RlvrWorkerExtension:
    """Methods vLLM mixes into each of its GPU workers (worker_extension_cls); called by collective_rpc.

    `self` is the vLLM worker: self.model_runner.model is the model, self.device its GPU.
    """

    def rlvr_load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Load (name, tensor) pairs with HF names; tensors may live on CPU or any GPU."""
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=[(name, t.to(self.device, non_blocking=True)) for name, t in named_tensors])  # type: ignore[attr-defined]
        torch.cuda.synchronize()
        return len(named_tensors)

    def rlvr_init_weight_group(self, master_address: str, master_port: int, rank_offset: int,
                               world_size: int) -> None:
        """Join the NCCL group whose rank 0 is the learner (see WeightBroadcaster)."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + rank_offset
        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
        self.rlvr_comm = PyNcclCommunicator(group, device=self.device)  # type: ignore[attr-defined]

    def rlvr_receive_weights(self, metadata: list[tuple[str, str, tuple[int, ...]]]) -> int:
        """Receive tensors broadcast from the learner (rank 0), one per (name, dtype, shape), and load them."""
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        for name, dtype_name, shape in metadata:
            buffer = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)  # type: ignore[attr-defined]
            self.rlvr_comm.broadcast(buffer, src=0, stream=torch.cuda.current_stream())  # type: ignore[attr-defined]
            model.load_weights(weights=[(name, buffer)])
        torch.cuda.synchronize()
        return len(metadata)


class VLLMEngine:
    """RolloutEngine on vLLM (see the module docstring).

    model_path: a local HF directory (config.json + safetensors); never a hub name.
    eos_token_ids: ids that always end a completion. dtype: "bfloat16" (default on GPU), "float16",
    "float32" (for log-prob parity checks). gpu_memory_utilization: fraction of the GPU vLLM may
    take (weights + KV cache); leave room for the learner when colocated. colocated: run vLLM's
    engine core in this process (fast in-process weight loading); set False to let vLLM use its
    own processes (tensor_parallel_size > 1 needs that). skip_tokenizer_init: token ids only (no
    tokenizer needed; stop strings then unsupported). extra: passed to vllm.LLM unchanged.
    """

    def __init__(
        self,
        model_path: str,
        eos_token_ids: Sequence[int] | int | None = (),
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool = False,
        sleep_level: Literal[1, 2] = 1,
        colocated: bool = True,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        skip_tokenizer_init: bool = True,
        seed: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as err:  # vllm is an optional extra
            raise RuntimeError("the vLLM rollout engine needs vLLM on a GPU machine: pip install 'rlvr[vllm]'") from err
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"VLLMEngine: {model_path} is not a local model directory")
        if colocated and tensor_parallel_size == 1:
            # The engine core in this process: collective_rpc then passes tensors by reference.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if isinstance(eos_token_ids, int):
            eos_token_ids = (eos_token_ids,)
        self.eos_token_ids = tuple(int(i) for i in (eos_token_ids or ()))
        self.skip_tokenizer_init = skip_tokenizer_init
        self.sleep_level = sleep_level
        self.sleep_enabled = enable_sleep_mode
        self.asleep: set[str] = set()
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode,
            enable_prefix_caching=enable_prefix_caching,  # the n samples of a prompt share its prefill
            enforce_eager=enforce_eager,
            skip_tokenizer_init=skip_tokenizer_init,
            seed=seed,
            logprobs_mode="processed_logprobs",  # after temperature: what the learner computes
            worker_extension_cls=WORKER_EXTENSION,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(extra or {})
        self.llm = vllm.LLM(**kwargs)
        self.last_stats: dict[str, float] = {}

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
        import time

        from vllm.inputs import TokensPrompt

        self._wake(("weights", "kv_cache"))
        start = time.perf_counter()
        requests, sampling = [], []
        for p, ids in enumerate(prompt_ids):
            if len(ids) == 0:
                raise ValueError(f"VLLMEngine.generate: prompt {p} is empty")
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
                raise RuntimeError(f"VLLMEngine: vLLM returned {len(out.outputs)} completions, expected {per_prompt}")
        return rollouts

    # ---------------------------------------------------------------- weights and memory

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the learner's weights (HF names) into every vLLM worker."""
        self._wake(("weights",))
        items = [(name, t.detach()) for name, t in state_dict.items()]
        self.llm.collective_rpc("rlvr_load_weights", args=(items,))
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
            raise RuntimeError("VLLMEngine.sleep needs enable_sleep_mode=True")
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

        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=0, world_size=world_size)
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


__all__ = ["RlvrWorkerExtension", "VLLMEngine", "WeightBroadcaster"]
