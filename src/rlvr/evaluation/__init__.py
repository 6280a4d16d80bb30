"""Evaluation: avg@n, pass@k, maj@k, length / truncation / reflection statistics, run reports.

evaluate(engine, tokenizer, task, examples, EvalSampling(...))  sample, score, summarise
write_eval(result, out_dir)                                    metrics.json + samples.jsonl
compute_metrics(samples, k_values, keys)                       the same metrics from samples
write_report(run_dir)                                          run_dir/report.html (+ plots/)
"""

from rlvr.evaluation.evaluate import (
    EvalResult,
    EvalSampling,
    ModelLoading,
    eval_command,
    evaluate,
    format_summary,
    load_engine,
    read_eval,
    write_eval,
)
from rlvr.evaluation.metrics import compute_metrics, maj_at_k, normalize_answer, pass_at_k
from rlvr.evaluation.report import write_report

__all__ = [
    "EvalResult",
    "EvalSampling",
    "ModelLoading",
    "compute_metrics",
    "eval_command",
    "evaluate",
    "format_summary",
    "load_engine",
    "maj_at_k",
    "normalize_answer",
    "pass_at_k",
    "read_eval",
    "write_eval",
    "write_report",
]
