"""Rollout throughput on a GPU: generated tokens/s of the vLLM engine vs rlvr's TorchEngine (baseline).

Both engines sample the same prompts (random ids, --prompt-tokens long) from the same random-weight
model of Qwen2.5 shape (rlvr.distributed.shapes), n samples per prompt, temperature 1.0, every
completion running to --max-new tokens (no stop id), so both do the same work. Tokens/s =
completion tokens / wall seconds of the generate() call (prefill included), best of --repeats after
one warm-up call; the ratio column is against TorchEngine measured in the same run. Also reported:
the time to push the learner's weights into the engine (load_weights), which the RL loop pays
after every update.

    python bench/bench_gpu_rollout.py --shape 1.5B
    python bench/bench_gpu_rollout.py --shape 0.5B --engines vllm --num-prompts 256
    python bench/bench_gpu_rollout.py --shape tiny --device cpu --engines torch   # check the script on CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rlvr.distributed.shapes import random_model, random_model_dir
from rlvr.rollout import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine


def make_prompts(num: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, vocab, (length,), generator=g).tolist() for _ in range(num)]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(engine, model, prompts, params, repeats: int, device: torch.device) -> tuple[float, int, float]:
    """(best seconds per generate call, completion tokens per call, seconds of one load_weights)."""
    tokens = 0

    def call() -> None:
        nonlocal tokens
        tokens = sum(len(r.token_ids) for r in engine.generate(prompts, params))

    timed(call, device)  # warm-up
    best = min(timed(call, device) for _ in range(repeats))
    sync = timed(lambda: engine.load_weights(model.state_dict()), device)
    return best, tokens, sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="0.5B")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--engines", default="torch,vllm",
                    help="comma list of torch, vllm (torch is the baseline)")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPUs (use --device cpu --shape "
                         "tiny --engines torch)")
    dtype = getattr(torch, args.dtype)
    model = random_model(args.shape, dtype, str(device), logit_scale=4.0)
    vocab = model.arch.vocab_size
    prompts = make_prompts(args.num_prompts, args.prompt_tokens, vocab)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new, seed=0)
    print(f"shape {args.shape}, {args.dtype} on {device}: {args.num_prompts} prompts x {args.n} samples, "
          f"{args.prompt_tokens} prompt tokens, {args.max_new} new tokens each")
    baseline = None
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "torch":
            engine = TorchEngine(model, eos_token_ids=(), pad_token_id=0, device=device)
        elif name == "vllm":
            from rlvr.rollout.vllm_engine import VLLMEngine

            directory = random_model_dir(args.shape, tempfile.mkdtemp(prefix="rlvr-bench-") + "/model", dtype,
                                         str(device), logit_scale=4.0)
            engine = VLLMEngine(str(directory), eos_token_ids=(), dtype=args.dtype,
                                gpu_memory_utilization=args.gpu_memory_utilization,
                                max_model_len=args.prompt_tokens + args.max_new + 8)
        else:
            raise SystemExit(f"unknown engine {name!r}; valid: torch, vllm")
        best, tokens, sync = measure(engine, model, prompts, params, args.repeats, device)
        tps = tokens / best
        baseline = baseline or tps
        print(f"  {name:6s} {best:8.2f} s  {tps:10.0f} tokens/s  ratio {tps / baseline:5.2f}  "
              f"load_weights {sync:6.3f} s")
        del engine


if __name__ == "__main__":
    main()
