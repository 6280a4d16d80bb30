"""Generation throughput: rlvr's TorchEngine (native and HF-model paths) vs transformers' generate.

Same process, same random weights, same batch (16 prompts x 8 samples = 128 rows, prompts of
60-120 tokens) and same length limits for every contender. Two workloads:
  fixed   every completion runs to max_new_tokens (no stop token);
  uneven  natural lengths: a set of stop ids holds ~1/150 of the probability mass of the
          near-uniform random model, so completions stop after a geometric number of tokens
          (capped at max_new_tokens), as rollouts of a real policy do.
Sampling: temperature 1.0, top-p 1.0, no top-k (HF's default top_k=50 is switched off).
Tokens/s = completion tokens / wall seconds of the whole call (prefill included), best of
--repeats runs (the machine is shared; the best run is the least disturbed one). The ratio column
is against HF generate fp32 measured in the same run.

    .venv/bin/python bench/bench_generation.py                # tiny and small presets
    .venv/bin/python bench/bench_generation.py --presets tiny --repeats 2 --threads 1

On a machine shared with other jobs, 2-thread runs swing by up to 10x (a thread that loses its
core stalls every op); --threads 1 gives steadier ratios.

Measured (torch 2.13 CPU, AMD EPYC with AVX512-BF16, shared by other jobs, --threads 1), tokens/s
and ratio vs HF generate fp32:
                     fixed 250 tokens                 uneven (mean ~115 tokens)
  tiny  1.1M   HF 1827 | native fp32 2.45x | bf16 3.20x   HF 1424 | fp32 3.67x | bf16 3.10x
  small 24.6M  HF  424 | native fp32 1.30x | bf16 2.31x   HF  174 | fp32 2.57x | bf16 4.09x
fp32 decoding of the small preset is matmul-bound (the same FLOPs as HF); bf16 weight copies
roughly double matmul throughput on this CPU; for the tiny preset attention over the KV cache
dominates and bf16 gains little.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr.models.native import NativeCausalLM
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine

VOCAB = 1000
PRESETS = {
    # ~1.1M parameters: the default CPU job's size
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    # ~25M parameters
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2),
}


def build(preset: str, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, tie_word_embeddings=True, pad_token_id=0, **PRESETS[preset])
    return Qwen2ForCausalLM(config).eval()


def make_prompts(num_prompts: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(60, 121, (num_prompts,), generator=g).tolist()
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def stop_ids_for(workload: str) -> list[int]:
    # ~1000/150 ids of a near-uniform distribution: mean natural length ~150 tokens
    return list(range(VOCAB - 7, VOCAB)) if workload == "uneven" else []


def run_engine(model, prompts, n, max_new, stop_ids, seed, dtype=None,
               share_prompt=None) -> tuple[int, float]:
    engine = TorchEngine(model, eos_token_ids=stop_ids, pad_token_id=0, dtype=dtype,
                         share_prompt=share_prompt)
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new, seed=seed)
    start = time.perf_counter()
    rollouts = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    return sum(len(r.token_ids) for r in rollouts), seconds


def run_hf_generate(model, prompts, n, max_new, stop_ids, seed) -> tuple[int, float]:
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
            max_new_tokens=max_new, num_return_sequences=n, pad_token_id=0,
            eos_token_id=stop_ids or None,
        )
    seconds = time.perf_counter() - start
    completions = out[:, T:]
    if stop_ids:
        # tokens up to and including the first stop id; HF pads finished rows with pad_token_id
        is_stop = torch.isin(completions, torch.tensor(stop_ids))
        first = torch.where(is_stop.any(1), is_stop.float().argmax(1) + 1, completions.shape[1])
        tokens = int(first.sum())
    else:
        tokens = completions.numel()
    return tokens, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--workloads", default="fixed,uneven")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=2, help="rounds; contenders take turns within a round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 native run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts = make_prompts(args.prompts, seed=0)
    rows = args.prompts * args.n
    print(f"torch {torch.__version__}, {args.threads} threads, {args.prompts} prompts x {args.n} samples, "
          f"prompt lengths {min(map(len, prompts))}-{max(map(len, prompts))}, "
          f"max_new_tokens {args.max_new_tokens}, best of {args.repeats} interleaved rounds")
    header = (f"{'preset':<7}{'params':>8}  {'workload':<9}{'contender':<36}{'tokens/s':>10}{'mean len':>10}"
              f"{'vs HF':>8}")
    print(header)
    print("-" * len(header))
    for preset in args.presets.split(","):
        hf = build(preset, seed=0)
        native = NativeCausalLM.from_hf(hf)
        params_m = sum(p.numel() for p in hf.parameters()) / 1e6
        contenders = [
            ("HF generate fp32 (baseline)", run_hf_generate, hf),
            ("TorchEngine native fp32", run_engine, native),
            # the native path as of 88636d5: every sample decodes from its own copy of the prompt's K/V
            ("TorchEngine native fp32 replicated", partial(run_engine, share_prompt=False), native),
            ("TorchEngine HF-model fp32", run_engine, hf),
        ]
        if not args.no_bf16:
            # the fp32 model (as shared with an fp32 learner) decoding from bf16 weight copies
            contenders.append(("TorchEngine native bf16", partial(run_engine, dtype=torch.bfloat16), native))
        for workload in args.workloads.split(","):
            stop = stop_ids_for(workload)
            best = {name: 0.0 for name, _, _ in contenders}
            tokens_total = {name: 0 for name, _, _ in contenders}
            for r in range(args.repeats):
                for name, fn, model in contenders:
                    tokens, seconds = fn(model, prompts, args.n, args.max_new_tokens, stop, 1 + r)
                    best[name] = max(best[name], tokens / seconds)
                    tokens_total[name] += tokens
            baseline = best[contenders[0][0]]
            for name, _, _ in contenders:
                mean_len = tokens_total[name] / (rows * args.repeats)
                print(f"{preset:<7}{params_m:>7.1f}M  {workload:<9}{name:<36}{best[name]:>10.0f}"
                      f"{mean_len:>10.1f}{best[name] / baseline:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
