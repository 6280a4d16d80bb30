"""`rlvr report RUN_DIR`: one self-contained HTML page about a run, plus PNG plots.

The page (run_dir/report.html) has no scripts, no external files and no network access: plots
are inline SVG drawn here, so it opens anywhere and survives being mailed around. Sections:
headline figures, training curves (reward, accuracy, group outcomes, response length and
truncation, entropy, KL, clip fractions, losses, learning rate and temperature schedules, time
per phase, throughput; curriculum and context-length stage changes drawn as vertical lines),
time per phase, evaluations (a table with one row per evaluation and one column per metric, then
before / after RL per difficulty), sample completions (best, worst, longest, with rewards),
summary.json and the resolved config. The title is the recipe's name (config.yaml); charts fill
the page width in as many columns as fit, and a step axis has whole-number ticks. With matplotlib installed
the same curves are also written as run_dir/plots/*.png for a terminal user.

Inputs (written by the trainers; any of them may be missing, any metric key may be absent):
config.yaml, metrics.jsonl (one object per line with "step" and "phase" = "sft" | "rl"),
samples/step_XXXXXX.jsonl, eval/<name>/metrics.json + samples.jsonl, summary.json.
A malformed metrics line is skipped and named (FILE:LINE) in the report's warnings.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlvr.evaluation.metrics import breakdown_table

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MAX_POINTS = 1500  # per series; longer series are thinned (every k-th point, the last kept)

# (phase, title, metric keys or "prefix/*"). Keys absent from the run are skipped.
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("rl", "Reward", ("reward/mean",)),
    ("rl", "Accuracy and format errors", ("accuracy", "format_error_ratio")),
    ("rl", "Groups all correct / all wrong", ("all_correct_ratio", "all_wrong_ratio")),
    ("rl", "Response length (tokens)", ("response_length/mean", "response_length/min", "response_length/max",
                                        "rollout/max_new_tokens")),
    ("rl", "Truncated responses (ratio)", ("response_length/clip_ratio",)),
    ("rl", "Entropy", ("actor/entropy",)),
    ("rl", "KL", ("actor/kl_loss", "actor/ppo_kl")),
    ("rl", "Clip fractions", ("actor/pg_clipfrac", "actor/pg_clipfrac_lower")),
    ("rl", "Policy loss", ("actor/pg_loss",)),
    ("rl", "Gradient norm", ("actor/grad_norm",)),
    ("rl", "Learning rate", ("actor/lr",)),
    ("rl", "Sampling temperature", ("rollout/temperature",)),
    ("rl", "Time per phase (s)", ("timing_s/*",)),
    ("rl", "Generation throughput (tokens/s)", ("perf/gen_tokens_per_s",)),
    ("sft", "SFT loss", ("sft/loss",)),
    ("sft", "SFT learning rate", ("sft/lr",)),
    ("sft", "SFT throughput (tokens/s)", ("sft/tokens_per_s",)),
)
# Values that mark stage boundaries when they change between RL steps.
STAGE_KEYS = (("curriculum/stage", "stage"), ("rollout/max_new_tokens", "context"))
_NOT_PLOTTED = frozenset({"step", "phase", "epoch", "time", "timestamp"})


# ------------------------------------------------------------------------------------ reading


@dataclass
class Panel:
    """One chart: series are (label, xs, ys); markers are (x, label) vertical lines."""

    title: str
    series: list[tuple[str, list[float], list[float]]]
    markers: list[tuple[float, str]] = field(default_factory=list)
    x_label: str = "step"


@dataclass
class Run:
    directory: Path
    config_text: str | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # phase -> rows by step
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


def read_metrics(path: Path, warnings: list[str]) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl -> {phase: rows sorted by step}; a later line for the same (phase, step)
    replaces an earlier one (a resumed run). Bad lines are skipped and named in `warnings`."""
    by_phase: dict[str, dict[int, dict[str, Any]]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                warnings.append(f"{path}:{number}: skipped, not JSON ({error.msg})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
                warnings.append(f"{path}:{number}: skipped, expected an object with a numeric 'step'")
                continue
            phase = str(row.get("phase", "rl"))
            by_phase.setdefault(phase, {})[int(row["step"])] = row
    return {phase: [rows[s] for s in sorted(rows)] for phase, rows in by_phase.items()}


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        warnings.append(f"{path}: skipped, {error}")
        return None


def read_jsonl(path: Path, warnings: list[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Objects of a JSONL file (up to `limit`); bad lines are skipped and named in `warnings`."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                warnings.append(f"{path}:{number}: skipped, not JSON ({error.msg})")
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _eval_order(path: Path) -> tuple[int, str]:
    """before_* evals first, then after_*, then the rest; alphabetical within each."""
    name = path.parent.name
    rank = 0 if name.startswith("before_") else 1 if name.startswith("after_") else 2
    return rank, name


def read_run(run_dir: str | os.PathLike[str]) -> Run:
    """Everything the report shows, from a run directory (missing parts stay empty)."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    run = Run(directory)
    if (directory / "config.yaml").is_file():
        run.config_text = (directory / "config.yaml").read_text(encoding="utf-8", errors="replace")
    if (directory / "metrics.jsonl").is_file():
        run.rows = read_metrics(directory / "metrics.jsonl", run.warnings)
    for metrics_file in sorted((directory / "eval").glob("*/metrics.json"), key=_eval_order):
        payload = _read_json(metrics_file, run.warnings)
        if isinstance(payload, dict) and isinstance(payload.get("metrics"), dict):
            run.evals[metrics_file.parent.name] = payload
    if (directory / "summary.json").is_file():
        summary = _read_json(directory / "summary.json", run.warnings)
        run.summary = summary if isinstance(summary, dict) else None
    if not (run.rows or run.evals or run.summary):
        run.warnings.append(f"{directory}: no metrics.jsonl, eval/*/metrics.json or summary.json found")
    return run


# ------------------------------------------------------------------------------------ panels


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_PLOTTED and _number(value) is not None:
                seen.setdefault(key)
    return list(seen)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = _number(row.get(key))
        if value is not None:
            xs.append(float(row["step"]))
            ys.append(value)
    return xs, ys


def stage_markers(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(step, label) where a curriculum stage or the response-length limit changes."""
    markers = []
    for key, label in STAGE_KEYS:
        previous = None
        for row in rows:
            value = row.get(key)
            if value is None:
                continue
            if previous is not None and value != previous:
                shown = int(value) if isinstance(value, float) and value.is_integer() else value
                markers.append((float(row["step"]), f"{label} {shown}"))
            previous = value
    return sorted(markers)


CURVE_KEY = "eval/sampled_accuracy"  # phase rl_eval: the in-loop learning curve (eval.every)


def curve_panel(rows_by_phase: Mapping[str, Sequence[Mapping[str, Any]]]) -> Panel | None:
    """The RL learning curve: held-out sampled accuracy every eval.every steps (phase rl_eval, step =
    RL steps done) over the training reward (phase rl: the batch the policy sampled after `step`
    steps), so both x values count the updates behind the policy. None without a curve."""
    xs, ys = _series(rows_by_phase.get("rl_eval", []), CURVE_KEY)
    if not xs:
        return None
    series = [("held-out accuracy (in-loop eval)", xs, ys)]
    train_x, train_y = _series(rows_by_phase.get("rl", []), "reward/mean")
    if train_x:
        series.append(("training reward/mean", train_x, train_y))
    return Panel("Learning curve: held-out accuracy and training reward", series,
                 stage_markers(rows_by_phase.get("rl", [])), x_label="RL steps done")


def training_panels(rows_by_phase: Mapping[str, Sequence[Mapping[str, Any]]]
                    ) -> tuple[list[Panel], list[Panel]]:
    """(main panels: the learning curve, then PANELS order; extra panels for the remaining keys
    grouped by prefix)."""
    main: list[Panel] = []
    used: set[str] = set()
    curve = curve_panel(rows_by_phase)
    if curve is not None:
        main.append(curve)
        used.add(f"rl_eval:{CURVE_KEY}")
    markers = stage_markers(rows_by_phase.get("rl", []))
    for phase, title, wanted in PANELS:
        rows = rows_by_phase.get(phase, [])
        present = _keys(rows)
        keys = []
        for key in wanted:
            if key.endswith("/*"):
                keys += [k for k in present if k.startswith(key[:-1])]
            elif key in present:
                keys.append(key)
        series = [(key, *_series(rows, key)) for key in keys]
        used.update(f"{phase}:{key}" for key in keys)
        if series:
            main.append(Panel(title, series, markers if phase == "rl" else []))
    extra: list[Panel] = []
    for phase, rows in rows_by_phase.items():
        groups: dict[str, list[str]] = {}
        for key in _keys(rows):
            if f"{phase}:{key}" not in used:
                groups.setdefault(key.split("/")[0], []).append(key)
        for prefix, keys in groups.items():
            for start in range(0, len(keys), 4):  # at most four lines a chart
                chunk = keys[start:start + 4]
                extra.append(Panel(f"{prefix}/… ({phase})" + (f" {start // 4 + 1}" if len(keys) > 4 else ""),
                                   [(key, *_series(rows, key)) for key in chunk],
                                   markers if phase == "rl" else []))
    return main, extra


# --------------------------------------------------------------------------------------- SVG


def format_number(value: float) -> str:
    """Short tick / table label: 3 significant digits, scientific for very small or large."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-3 or magnitude >= 1e6:
        return f"{value:.2e}".replace("e-0", "e-").replace("e+0", "e")
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high];
    integer=True keeps them whole numbers (an axis of steps: a 2-step run has no step 1.5)."""
    if not high > low:
        return [low]
    raw = (high - low) / max(count, 1)
    if integer:
        raw = max(raw, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _thin(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    if len(xs) <= max_points:
        return list(xs), list(ys)
    stride = math.ceil(len(xs) / max_points)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _bounds(values: Iterable[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def svg_line_chart(panel: Panel, width: int = 440, height: int = 250, max_points: int = MAX_POINTS) -> str:
    """An inline <svg> line chart of a Panel (NaN / inf values break the line)."""
    left, right, top, bottom = 58, 12, 26, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    all_x = [x for _, xs, _ in panel.series for x in xs] + [m for m, _ in panel.markers]
    x_low, x_high = (min(all_x), max(all_x)) if all_x else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = _bounds(y for _, _, ys in panel.series for y in ys)

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    out = [_svg_open(width, height, panel.title),
           f'<text x="{width / 2}" y="16" text-anchor="middle" class="t">{html.escape(panel.title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>']
    for tick in nice_ticks(y_low, y_high, 6):
        y = py(tick)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tick">'
                   f'{format_number(tick)}</text>')
    for tick in nice_ticks(x_low, x_high, integer=True):  # x counts steps
        x = px(tick)
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 13}" text-anchor="middle" class="tick xt">'
                   f'{format_number(tick)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 25}" text-anchor="middle" class="tick">'
               f'{html.escape(panel.x_label)}</text>')
    for x_value, label in panel.markers:
        x = px(x_value)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="marker"/>'
                   f'<text x="{x + 2:.1f}" y="{top + 9}" class="mlabel">{html.escape(label)}</text>')
    labels = _short_labels([label for label, _, _ in panel.series])
    for i, (_, xs, ys) in enumerate(panel.series):
        color = PALETTE[i % len(PALETTE)]
        xs, ys = _thin(xs, ys, max_points)
        for segment in _segments(xs, ys):
            if len(segment) == 1:
                x, y = segment[0]
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
            else:
                points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
                out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5">'
                           f'<title>{html.escape(panel.series[i][0])}</title></polyline>')
    entries = [(f"{label} ({format_number(ys[-1] if ys else math.nan)})", PALETTE[i % len(PALETTE)])
               for i, (label, (_, _, ys)) in enumerate(zip(labels, panel.series))]
    legend, rows = _legend(entries, left, height - 10, width - right)
    out.append(legend + "</svg>")
    return _grow("".join(out), width, height, rows)


def _short_labels(labels: Sequence[str]) -> list[str]:
    """Drop a "prefix/" that every label shares (the chart title already says it)."""
    heads = {label.rsplit("/", 1)[0] for label in labels if "/" in label}
    if len(labels) > 1 and len(heads) == 1 and all("/" in label for label in labels):
        return [label.rsplit("/", 1)[1] for label in labels]
    return list(labels)


def _legend(entries: Sequence[tuple[str, str]], x0: float, y0: float, x_max: float) -> tuple[str, int]:
    """Legend swatches and texts laid out in rows below the plot; returns (svg, rows used)."""
    parts, x, y, rows = [], x0, y0, 1
    for text, color in entries:
        span = 20 + 5.6 * len(text)
        if x > x0 and x + span > x_max:
            x, y, rows = x0, y + 13, rows + 1
        parts.append(f'<rect x="{x:.0f}" y="{y - 7:.0f}" width="10" height="8" fill="{color}"/>'
                     f'<text x="{x + 13:.0f}" y="{y:.0f}" class="legend">{html.escape(text)}</text>')
        x += span
    return "".join(parts), rows


def _svg_open(width: int, height: int, title: str) -> str:
    """An <svg> drawn in a width x height box and shown at the width of its container (the page
    lays charts out in columns that fill it); its height follows from the box's aspect ratio."""
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{html.escape(title)}">')


def _grow(svg: str, width: int, height: int, rows: int) -> str:
    """Make room for legend rows beyond the first."""
    if rows <= 1:
        return svg
    taller = height + 13 * (rows - 1)
    return svg.replace(f'viewBox="0 0 {width} {height}"', f'viewBox="0 0 {width} {taller}"', 1)


def _segments(xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys):
        if math.isfinite(y):
            segments[-1].append((x, y))
        elif segments[-1]:
            segments.append([])
    return [s for s in segments if s]


def svg_bar_chart(title: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
                  width: int = 440, height: int = 250) -> str:
    """Grouped bars: one group per category, one bar per series (None = no bar)."""
    left, right, top, bottom = 44, 12, 26, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    y_high = max([1.0] + values) if values and max(values) > 1.0 else 1.0
    y_low = min([0.0] + values)
    out = [_svg_open(width, height, title),
           f'<text x="{width / 2}" y="16" text-anchor="middle" class="t">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>']

    def py(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    for tick in nice_ticks(y_low, y_high):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" '
                   'class="grid"/>'
                   f'<text x="{left - 4}" y="{py(tick) + 3:.1f}" text-anchor="end" class="tick">'
                   f'{format_number(tick)}</text>')
    group_w = plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for c, category in enumerate(categories):
        x0 = left + c * group_w + group_w * 0.1
        out.append(f'<text x="{left + (c + 0.5) * group_w:.1f}" y="{top + plot_h + 13}" text-anchor="middle" '
                   f'class="tick">{html.escape(str(category))}</text>')
        for s, (label, vs) in enumerate(series):
            value = vs[c]
            if value is None or not math.isfinite(value):
                continue
            y, y0 = py(value), py(max(y_low, 0.0))
            out.append(f'<rect x="{x0 + s * bar_w:.1f}" y="{min(y, y0):.1f}" width="{bar_w * 0.95:.1f}" '
                       f'height="{abs(y0 - y):.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                       f'<title>{html.escape(f"{label} {category}: {format_number(value)}")}</title></rect>')
    entries = [(label, PALETTE[s % len(PALETTE)]) for s, (label, _) in enumerate(series)]
    legend, rows = _legend(entries, left, height - 10, width - right)
    out.append(legend + "</svg>")
    return _grow("".join(out), width, height, rows)


# ---------------------------------------------------------------------------------------- PNG


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "plot"


def write_pngs(panels: Sequence[Panel], directory: Path) -> list[Path]:
    """Each panel as directory/<slug>.png with matplotlib's Agg canvas (no global backend
    change); [] when matplotlib is not installed. Files are written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels:
        figure = Figure(figsize=(6.4, 3.6), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        for i, (label, xs, ys) in enumerate(panel.series):
            axes.plot(xs, ys, label=label, color=PALETTE[i % len(PALETTE)], linewidth=1.3,
                      marker="o" if len(xs) == 1 else None)
        for x, label in panel.markers:
            axes.axvline(x, color="#888888", linestyle="--", linewidth=0.8)
            axes.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                          xytext=(2, -9), textcoords="offset points", color="#555555")
        axes.set_title(panel.title)
        axes.set_xlabel(panel.x_label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = directory / f"{_slug(panel.title)}.png"
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        figure.savefig(temp, format="png")
        os.replace(temp, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1400px;
padding:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:4px 0}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:16px 0 6px}.sub{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.grid-charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr));gap:8px}
svg{background:#fff;border:1px solid #eee;border-radius:4px;font-family:inherit;display:block;width:100%;
height:auto}
svg .t{font-size:13px;font-weight:600;fill:#222}svg .tick{font-size:10px;fill:#555}
svg .legend{font-size:10px;fill:#333}svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}
svg .marker{stroke:#888;stroke-dasharray:4 3}svg .mlabel{font-size:9px;fill:#666}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f6f6f6}
td.l,th.l{text-align:left}.pos{color:#1a7f37}.neg{color:#c62828}
pre{background:#f7f7f7;border:1px solid #e4e4e4;padding:8px;overflow:auto;font-size:12px;max-height:420px;
white-space:pre-wrap;word-break:break-word}
details{margin:6px 0}summary{cursor:pointer}.warn{color:#8a5a00}
.sample{border:1px solid #e4e4e4;border-radius:6px;padding:6px 10px;margin:8px 0}
.control{border:2px solid #c62828;border-radius:6px;padding:8px 12px;background:#fff4f4}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    number = _number(value)
    return format_number(number) if number is not None else _esc(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left_columns: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left_columns else ""}">{_esc(h)}</th>'
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            css = "l" if i < left_columns else ""
            if isinstance(value, tuple):  # (text, css class), e.g. a signed delta
                value, css = value
                cells.append(f'<td class="{css}">{value}</td>')
            else:
                cells.append(f'<td class="{css}">{_cell(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        items = []
        for key, inner in value.items():
            items += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return items
    if isinstance(value, list) and len(value) > 8:
        return [(prefix, json.dumps(value[:8])[:-1] + ", ...]")]
    return [(prefix, json.dumps(value) if isinstance(value, (list, dict)) else value)]


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for row in reversed(rows):
        value = _number(row.get(key))
        if value is not None:
            return value
    return None


def _cards(run: Run) -> str:
    rl = run.rows.get("rl", [])
    cards = []
    for key, label in (("reward/mean", "final reward (train)"), ("accuracy", "final accuracy (train)"),
                       ("response_length/mean", "final response length")):
        value = _last(rl, key)
        if value is not None:
            cards.append((format_number(value), label))
    for name in ("greedy", "sampled"):
        before, after = run.evals.get(f"before_rl_{name}"), run.evals.get(f"after_rl_{name}")
        if before and after:
            b, a = before["metrics"].get("avg@n"), after["metrics"].get("avg@n")
            if b is not None and a is not None:
                cards.append((f"{b:.3f} → {a:.3f}", f"eval {name} accuracy before → after RL"))
    if rl:
        cards.append((str(int(rl[-1]["step"])), "RL steps"))
    sft = run.rows.get("sft", [])
    if sft:
        cards.append((str(int(sft[-1]["step"])), "SFT steps"))
    return '<div class="cards">' + "".join(f"<div class=card><b>{_esc(v)}</b><span>{_esc(k)}</span></div>"
                                           for v, k in cards) + "</div>"


def _config(run: Run) -> dict[str, Any]:
    """The run's config.yaml as a mapping ({} when absent or unreadable)."""
    if run.config_text is None:
        return {}

    try:
        config = yaml.safe_load(run.config_text)
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def run_name(run: Run) -> str:
    """The recipe's name (config.yaml's `name`), else the run directory's name."""
    name = _config(run).get("name")
    return str(name) if isinstance(name, str) and name.strip() else run.directory.resolve().name


def is_placebo_control(run: Run) -> bool:
    """Whether the run is a placebo control (rl.shuffle_rewards): from summary.json, or while the run
    has no summary yet, from its config.yaml."""
    if run.summary is not None and "placebo_control" in run.summary:
        return bool(run.summary["placebo_control"])
    rl = _config(run).get("rl")
    return isinstance(rl, dict) and rl.get("shuffle_rewards") is True


_CONTROL_NOTE = ("<p class=control><b>Placebo control run</b> (rl.shuffle_rewards): each group's rewards "
                 "were permuted among its samples before the advantages, so the RL update had the noise of a "
                 "real run and none of its signal. Its RL gain is the drift to compare a real run's gain "
                 "with.</p>")


def _timing_section(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = [k for k in _keys(rows) if k.startswith("timing_s/")]
    if not keys:
        return ""
    totals = {k: sum(_series(rows, k)[1]) for k in keys}
    whole = totals.get("timing_s/step") or sum(v for k, v in totals.items() if k != "timing_s/step")
    table_rows = []
    for key in sorted(keys, key=lambda k: -totals[k]):
        values = _series(rows, key)[1]
        share = f"{100 * totals[key] / whole:.1f}%" if whole else "–"
        table_rows.append((key[len("timing_s/"):], sum(values) / len(values), totals[key], share))
    header = ["phase", "mean s / step", "total s", "share of step"]
    return "<h3>Time per phase (RL)</h3>" + _table(header, table_rows)


def _eval_section(run: Run) -> str:
    if not run.evals:
        return ""
    parts = ["<h2>Evaluations</h2>", eval_table(run.evals)]
    breakdown = _breakdowns(run.evals)
    for key, (values, columns) in breakdown.items():
        header = [key] + [name for name, _ in columns]
        rows = []
        for i, value in enumerate(values):
            row: list[Any] = [value] + [col[i] for _, col in columns]
            rows.append(row)
        pairs = _before_after_pairs(list(run.evals))
        for before, after in pairs:
            header.append(f"Δ {after.replace('after_rl_', '')}")
            b = dict(columns)[before]
            a = dict(columns)[after]
            for i, row in enumerate(rows):
                delta = None if a[i] is None or b[i] is None else a[i] - b[i]
                row.append(("–", "") if delta is None else
                           (f"{delta:+.3f}", "pos" if delta > 0 else "neg" if delta < 0 else ""))
        parts.append(f"<h3>avg@n by {_esc(key)}</h3>" + _table(header, rows))
        chart_columns = [(name, col) for name, col in columns
                         if not pairs or any(name in pair for pair in pairs)]
        parts.append("<div class=grid-charts>" + svg_bar_chart(f"avg@n by {key}", values, chart_columns,
                                                               width=max(440, 60 * len(values))) + "</div>")
    return "".join(parts)


# The columns of the evaluations table after the accuracy metrics: (metrics.json key, header).
EVAL_COLUMNS = (("truncation_rate", "truncated"), ("format_error_rate", "format errors"),
                ("length/mean", "length"), ("reflection_words_per_response", "reflection words"))


def accuracy_keys(evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """avg@n, then pass@k and maj@k by k, over every eval (an eval without one shows a dash)."""
    found = {k for payload in evals.values() for k in payload["metrics"]
             if re.fullmatch(r"(pass|maj)@\d+", k)}
    by_k = sorted(found, key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])))
    return ["avg@n", *by_k]


def eval_table(evals: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per evaluation, one column per metric, then the sampling settings."""
    keys = accuracy_keys(evals)
    rows = []
    for name, payload in evals.items():
        m, s = payload["metrics"], payload.get("settings", {})
        setting = (f"n={s.get('n')} T={s.get('temperature')} top_p={s.get('top_p')} "
                   f"max_new_tokens={s.get('max_new_tokens')} seed={s.get('seed')}")
        rows.append([name, m.get("n_prompts"), *(m.get(k) for k in keys),
                     *(m.get(k) for k, _ in EVAL_COLUMNS), (_esc(setting), "l")])
    header = ["eval", "prompts", *keys, *(label for _, label in EVAL_COLUMNS), "settings"]
    return _table(header, rows)


def _before_after_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return [(n, "after_" + n[len("before_"):]) for n in names
            if n.startswith("before_") and "after_" + n[len("before_"):] in names]


def _breakdowns(evals: Mapping[str, Mapping[str, Any]]
                ) -> dict[str, tuple[list[str], list[tuple[str, list]]]]:
    """{breakdown key: (values, [(eval name, avg@n per value)])} over every eval."""
    keys = sorted({name.split("/")[0][3:] for payload in evals.values() for name in payload["metrics"]
                   if name.startswith("by_")})
    result = {}
    for key in keys:
        tables = {name: breakdown_table(payload["metrics"], key) for name, payload in evals.items()}
        values: list[str] = []
        for table in tables.values():
            values += [v for v in table if v not in values]
        values = sorted(values, key=_value_order)
        result[key] = (values, [(name, [tables[name].get(v) for v in values]) for name in evals])
    return result


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def pick_samples(samples: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, sample) for the best, worst and longest completions (by reward, then length)."""
    scored = [s for s in samples if _number(s.get("reward")) is not None]
    if not scored:
        return []

    def length(s: Mapping[str, Any]) -> float:
        return _number(s.get("n_tokens")) or float(len(str(s.get("completion", ""))))

    best = max(scored, key=lambda s: (s["reward"], -length(s)))
    worst = min(scored, key=lambda s: (s["reward"], -length(s)))
    longest = max(scored, key=length)
    if best["reward"] == worst["reward"]:
        labels = ("shortest (all rewards equal)", "longest (all rewards equal)", "longest")
    else:
        labels = ("best", "worst", "longest")
    picks, seen = [], set()
    for label, sample in zip(labels, (best, worst, longest)):
        if id(sample) not in seen:
            picks.append((label, sample))
            seen.add(id(sample))
    return picks


def _sample_html(label: str, sample: Mapping[str, Any]) -> str:
    facts = [f"reward {_cell(sample.get('reward'))}"]
    for key in ("correct", "format_ok", "n_tokens", "finish_reason", "extracted"):
        if sample.get(key) is not None:
            facts.append(f"{key} {_esc(sample[key])}")
    prompt = sample.get("prompt")
    prompt_html = f"<details><summary>prompt</summary><pre>{_esc(prompt)}</pre></details>" if prompt else ""
    completion = sample.get("completion", sample.get("response", sample.get("text", "")))
    return (f'<div class="sample"><b>{_esc(label)}</b> <span class="sub">{" · ".join(facts)}</span>'
            f"{prompt_html}<pre>{_esc(completion)}</pre></div>")


def _samples_section(run: Run) -> str:
    parts = []
    step_files = sorted((run.directory / "samples").glob("step_*.jsonl"))
    if step_files:
        latest = step_files[-1]
        picks = pick_samples(read_jsonl(latest, run.warnings, limit=20000))
        if picks:
            parts.append(f"<h3>RL completions, {_esc(latest.stem.replace('_', ' '))}</h3>")
            parts += [_sample_html(label, s) for label, s in picks]
    names = [n for n in run.evals if n.startswith("after_")] or list(run.evals)
    for name in names[:2]:
        path = run.directory / "eval" / name / "samples.jsonl"
        if path.is_file():
            picks = pick_samples(read_jsonl(path, run.warnings, limit=20000))
            if picks:
                parts.append(f"<h3>Eval completions, {_esc(name)}</h3>")
                parts += [_sample_html(label, s) for label, s in picks]
    return ("<h2>Sample completions</h2>" + "".join(parts)) if parts else ""


def render_html(run: Run, main: Sequence[Panel], extra: Sequence[Panel], pngs: Sequence[Path]) -> str:
    """The whole report page as one string."""
    title = f"{run_name(run)}: rlvr run report"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
             "<meta name=viewport content='width=device-width,initial-scale=1'>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1><div class=sub>{_esc(run.directory)} · report written {now}</div>",
             _CONTROL_NOTE if is_placebo_control(run) else "", _cards(run)]
    if run.warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in run.warnings[:50])
        more = f"<li>... and {len(run.warnings) - 50} more</li>" if len(run.warnings) > 50 else ""
        parts.append(f'<details class="warn" open><summary>{len(run.warnings)} warning(s)</summary>'
                     f"<ul>{items}{more}</ul></details>")
    if main:
        charts = "".join(svg_line_chart(p) for p in main)
        parts.append("<h2>Training</h2><div class=grid-charts>" + charts + "</div>")
        markers = stage_markers(run.rows.get("rl", []))
        if markers:
            parts.append("<p class=sub>Dashed lines: " + ", ".join(f"{_esc(label)} from step {int(x)}"
                                                                   for x, label in markers) + "</p>")
    parts.append(_timing_section(run.rows.get("rl", [])))
    if extra:
        parts.append(f"<details><summary>Other metrics ({len(extra)} charts)</summary><div class=grid-charts>"
                     + "".join(svg_line_chart(p) for p in extra) + "</div></details>")
    parts.append(_eval_section(run))
    parts.append(_samples_section(run))
    if run.summary is not None:
        parts.append("<h2>Summary</h2>" + _table(["key", "value"], _flatten(run.summary), left_columns=2))
    if run.config_text is not None:
        parts.append(f"<h2>Config</h2><pre>{_esc(run.config_text)}</pre>")
    if pngs:
        names = ", ".join(_esc(p.name) for p in pngs)
        parts.append(f"<p class=sub>PNG plots: {names} in {_esc(pngs[0].parent)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(run_dir: str | os.PathLike[str], png: bool = True) -> Path:
    """Write run_dir/report.html (self-contained) and, with png and matplotlib, run_dir/plots/*.png.

    Returns the path of report.html. The HTML is written atomically (temporary file + rename).
    """
    run = read_run(run_dir)
    main, extra = training_panels(run.rows)
    pngs = write_pngs(main, run.directory / "plots") if png else []
    page = render_html(run, main, extra, pngs)
    path = run.directory / "report.html"
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(page, encoding="utf-8")
    os.replace(temp, path)
    return path
