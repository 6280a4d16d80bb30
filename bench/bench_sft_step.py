"""SFT step time of the kk-tiny recipe: bf16 attention written out as matmuls vs the fused CPU kernel.

Builds the kk-tiny model and tokenizer offline (bench/out/kk-tiny-model; random weights: speed does
not depend on them), tokenizes batches of Knights-and-Knaves prompts with the recipe's solution
traces (terse prompts, stepwise trace, people [2, 3, 3, 3] as recipes/kk-tiny.yaml), and times full
SFT steps (packed forward, backward, AdamW) under bf16 autocast. The two attention paths alternate
batch by batch in one process, so load from other jobs hits both alike; the figure is the median
seconds per step of each and the ratio.

    .venv/bin/python bench/bench_sft_step.py               # 2 threads, 4 rounds of 6 batches
    .venv/bin/python bench/bench_sft_step.py --threads 1 --rounds 2

Measured (torch 2.13 CPU, 2 threads, quiet machine): see the README's speed table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import rlvr.models.native as native
from rlvr import tasks
from rlvr.config import load_config
from rlvr.models import eos_token_ids, init_model, load_tokenizer
from rlvr.trainers.pipeline import trace_pairs
from rlvr.trainers.sft import layout, sft_loss

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(ROOT / "recipes" / "kk-tiny.yaml", [])
    task = tasks.get(cfg.data.task, **cfg.data.task_options)
    model_dir = init_model(ROOT / "bench" / "out" / "kk-tiny-model", preset=cfg.model.preset,
                           task_options={cfg.data.task: cfg.data.task_options})
    tokenizer = load_tokenizer(model_dir)
    model = native.NativeCausalLM.from_pretrained(str(model_dir))
    model.train()
    eos = eos_token_ids(tokenizer)[0]
    size = cfg.sft.batch_size
    examples = task.examples(size * args.batches, seed=5, **cfg.sft.difficulty)
    pairs = trace_pairs(task, tokenizer, examples, eos, task.solution_trace)
    sequences = [p + c for p, c in pairs]
    starts = [len(p) for p, _ in pairs]
    batches = [(sequences[i : i + size], starts[i : i + size]) for i in range(0, len(sequences), size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    device = torch.device("cpu")

    def step(seqs: list[list[int]], first: list[int]) -> None:
        n = sum(len(s) - f for s, f in zip(seqs, first))
        for rows in layout([len(s) for s in seqs], cfg.sft.micro_batch_tokens, True):
            loss, _ = sft_loss(model, seqs, first, rows, device, True, "bfloat16")
            (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad()

    # native._attend picks its path with native._bf16: reporting "not bf16" sends it down its own
    # fused-kernel branch (which autocast then runs in bf16), the code path before the change.
    use_bf16 = native._bf16
    paths = {"fused kernel": lambda _: False, "written out": use_bf16}
    times: dict[str, list[float]] = {name: [] for name in paths}
    step(*batches[0])  # warm-up
    try:
        for _ in range(args.rounds):
            for seqs, first in batches:
                for name, choose in paths.items():
                    native._bf16 = choose
                    t0 = time.perf_counter()
                    step(seqs, first)
                    times[name].append(time.perf_counter() - t0)
    finally:
        native._bf16 = use_bf16
    mean_len = statistics.mean(len(s) for s in sequences)
    print(f"kk-tiny SFT step: {size} sequences (mean {mean_len:.0f} tokens), bf16 autocast, "
          f"{args.threads} threads, {len(times['fused kernel'])} steps each")
    base = statistics.median(times["fused kernel"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:13s} {median:.3f} s/step  (min {min(values):.3f})  speed-up {base / median:.2f}x")


if __name__ == "__main__":
    main()
