"""PNG plots of the benchmark sections (matplotlib, Agg backend: no display needed), drawn from each
section's ``raw`` numbers and written beside ``report.md``. Each plotter reads only the keys it knows and
skips what is missing, so a section that gains or loses keys still gets the plots it can."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from learning_machine.bench.report import Section

Plot = tuple[str, str]  # (file name, caption)


def figures(name: str, section: Section, out_dir: Path) -> list[Plot]:
    """Draw the plots of section ``name`` into ``out_dir``; the (file, caption) pairs written."""
    plotter = PLOTTERS.get(name)
    if plotter is None or section.error or not section.raw:
        return []
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    return plotter(section.raw, out_dir)


def _figure(width: float = 8.0, height: float = 4.5) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(True, axis="both", alpha=0.3)
    return fig, ax


def _save(fig: Figure, out_dir: Path, file: str, caption: str, plots: list[Plot]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out_dir / file)
    plt.close(fig)
    plots.append((file, caption))


def finite(value: Any) -> float | None:
    """A finite float, else None (missing, 'n/a', NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# -- training ---------------------------------------------------------------------------------------
def plot_training(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    runs = raw.get("runs", {})
    by_kind: dict[str, list[tuple[int, float, float, float]]] = {}
    for stats in runs.values():
        by_kind.setdefault(stats["kind"], []).append((stats["rows"], stats["median"], stats["min"], stats["max"]))
    plots: list[Plot] = []
    if not by_kind:
        return plots
    fig, ax = _figure(7, 4.5)
    slopes = raw.get("loglog_slope", {})
    for kind, points in by_kind.items():
        points.sort()
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        slope = slopes.get(kind)
        label = f"{kind} (slope {slope:.2f})" if slope is not None else kind
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.1f} s", (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows generated (75 % used for fitting)")
    ax.set_ylabel("wall time, fit + evaluation (s)")
    ax.set_title("Training time versus rows (log-log; median, bars = min-max)")
    ax.legend()
    _save(fig, out_dir, "training_time_vs_rows.png", "Training time versus rows, log-log", plots)
    return plots


# -- serving ----------------------------------------------------------------------------------------
def _short(name: str) -> str:
    return (name.replace(" (REST -> MLServer, stored)", " (validated, stored)")
            .replace("MLServer, ", "MLServer ").replace(" (V2)", "").replace("in-process, ", "in-process ")
            .replace("sklearn pipeline.predict_proba", "sklearn predict_proba"))


def plot_serving(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    import numpy as np

    plots: list[Plot] = []
    latency = raw.get("latency", {})
    if latency:
        names = list(latency)
        fig, ax = _figure(8, 0.55 * len(names) + 1.8)
        y = np.arange(len(names))
        p50 = [latency[n]["p50"] for n in names]
        p99 = [latency[n]["p99"] for n in names]
        ax.barh(y + 0.2, p50, height=0.4, label="p50")
        ax.barh(y - 0.2, p99, height=0.4, label="p99")
        for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
            ax.text(a, i + 0.2, f" {a:.2f}", va="center", fontsize=8)
            ax.text(b, i - 0.2, f" {b:.2f}", va="center", fontsize=8)
        ax.set_yticks(y, [_short(n) for n in names])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(right=max(p99) * 4)  # room for the value labels
        ax.set_xlabel("milliseconds per single-row request (log scale)")
        ax.set_title("Serving latency, one row per request")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _save(fig, out_dir, "serving_latency.png", "Single-row latency p50/p99 per serving path", plots)
    throughput = raw.get("throughput", {})
    if throughput and all(isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())
                          for v in throughput.values()):
        fig, ax = _figure(7, 4.5)
        for name, per in throughput.items():
            clients = sorted(per, key=int)
            ax.plot([int(c) for c in clients], [per[c]["rps"] for c in clients], marker="o", label=_short(name))
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(c) for c in sorted(next(iter(throughput.values())), key=int)],
                      [str(c) for c in sorted(next(iter(throughput.values())), key=int)])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests per second (one row each)")
        ax.set_title("Throughput versus concurrency (clients share the 2 cores)")
        ax.legend(fontsize=8)
        _save(fig, out_dir, "serving_throughput.png", "Requests per second at 1, 8 and 32 clients", plots)
    batch = raw.get("batch", {})
    if batch:
        fig, ax = _figure(7, 4.5)
        paths: dict[str, list[tuple[int, float]]] = {}
        for n, by_path in batch.items():
            for name, stats in by_path.items():
                paths.setdefault(name, []).append((int(n), stats["rows_per_s"]))
        for name, points in paths.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=_short(name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows per request")
        ax.set_ylabel("rows per second (sequential requests, at p50)")
        ax.set_title("Batch throughput: rows per second versus batch size")
        ax.legend(fontsize=8)
        _save(fig, out_dir, "serving_batches.png", "Rows per second versus rows per request", plots)
    explain = raw.get("explain", {})
    if explain:
        names = list(explain)
        fig, ax = _figure(8, 0.55 * len(names) + 1.8)
        values = [explain[n]["p50"] for n in names]
        ax.barh(range(len(names)), values, color="tab:green")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.1f} ms", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(right=max(values) * 4)  # room for the value labels
        ax.set_xlabel("milliseconds, p50 (log scale)")
        ax.set_title("Explanations and drift detection per method")
        _save(fig, out_dir, "serving_explanations.png", "Explanation latency per method (p50)", plots)
    return plots


# -- learning loop ----------------------------------------------------------------------------------
def loop_scenarios(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-scenario entries: dict values with at least one key the loop plots know."""
    return {k: v for k, v in raw.items() if isinstance(v, dict)
            and any(is_delay_key(key) or is_bound_key(key) or key.startswith("auc_") for key in v)}


def is_delay_key(key: str) -> bool:
    """``delays`` (the configured detector) or ``<detector>_delays`` (another one measured beside it)."""
    return key == "delays" or key.endswith("_delays")


def is_bound_key(key: str) -> bool:
    """``bound_rows`` or ``bound_<variant>_rows``: a lower bound on the delay, in rows."""
    return key.startswith("bound") and key.endswith("_rows")


def label_of(key: str, suffix: str) -> str:
    return key.removesuffix(suffix).replace("_", " ").strip()


def median_of(values: Any) -> float | None:
    import statistics

    if isinstance(values, list):
        found = [v for v in (finite(x) for x in values) if v is not None]
        return statistics.median(found) if found else None
    return finite(values)


def plot_loop(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    import numpy as np

    plots: list[Plot] = []
    scenarios = loop_scenarios(raw)
    if not scenarios:
        return plots
    names = list(scenarios)
    x = np.arange(len(names))
    delay_keys = sorted({k for v in scenarios.values() for k in v if is_delay_key(k)}, key=lambda k: (k != "delays", k))
    bound_keys = sorted({k for v in scenarios.values() for k in v if is_bound_key(k)},
                        key=lambda k: (k != "bound_rows", k))
    series = [(k, "detection delay" + (f", {label_of(k, 'delays')}" if k != "delays" else "") + " (median)")
              for k in delay_keys]
    series += [(k, "CUSUM lower bound" + (f", {label_of(k.removeprefix('bound'), 'rows')}"
                                          if k != "bound_rows" else "")) for k in bound_keys]
    if series:
        fig, ax = _figure(9, 5)
        width = 0.8 / len(series)
        positive: list[float] = []
        missed: list[float] = []
        for j, (key, label) in enumerate(series):
            offset = -0.4 + width * (j + 0.5)
            values = [median_of(scenarios[n].get(key)) for n in names]
            positive += [v for v in values if v]
            ax.bar(x + offset, [v or 0 for v in values], width=width, label=label,
                   hatch="//" if is_bound_key(key) else None, alpha=0.85)
            for i, name in enumerate(names):
                if is_delay_key(key):
                    seeds = [v for v in (finite(d) for d in scenarios[name].get(key, []) or []) if v is not None]
                    ax.scatter([i + offset] * len(seeds), seeds, color="black", s=10, zorder=3,
                               label="each seed" if j == 0 and i == 0 and seeds else None)
                    value, bound = values[i], finite(scenarios[name].get("bound_rows"))
                    if value is None and key in scenarios[name]:
                        missed.append(i + offset)
                    elif value and bound:
                        ax.text(i + offset, value, f"{value / bound:.1f}x", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        bottom = max(0.5, min(positive, default=1) / 2)
        ax.set_ylim(bottom, max(positive, default=10) * 2)
        for position in missed:
            ax.text(position, bottom * 1.1, "not\ndetected", ha="center", va="bottom", fontsize=7, color="tab:red")
        ax.set_xticks(x, names, rotation=15)
        ax.set_ylabel("rows after the drift starts (log scale)")
        ax.set_title("Learning loop: detection delay versus the CUSUM bound (labels: delay / bound)")
        ax.legend(fontsize=7)
        _save(fig, out_dir, "loop_delay_vs_bound.png", "Detection delay versus the CUSUM bound per scenario", plots)
    auc_keys = sorted({k for v in scenarios.values() for k in v if k.startswith("auc_")},
                      key=lambda k: (["auc_before", "auc_retrained", "auc_oracle", k].index(k), k))
    if auc_keys:
        fig, ax = _figure(8.5, 4.8)
        width = 0.8 / len(auc_keys)
        lows: list[float] = []
        for j, key in enumerate(auc_keys):
            values = [median_of(scenarios[n].get(key)) for n in names]
            lows += [v for v in values if v is not None]
            ax.bar(x - 0.4 + width * (j + 0.5), [v or 0 for v in values], width=width,
                   label=key.removeprefix("auc_").replace("_", " "))
        ax.set_ylim(max(0.0, min(lows, default=0.5) - 0.05), 1.0)
        ax.set_xticks(x, names, rotation=15)
        ax.set_ylabel("AUC on fresh post-drift rows (median over seeds)")
        ax.set_title("Learning loop: AUC before and after retraining, next to an oracle")
        ax.legend(fontsize=8)
        _save(fig, out_dir, "loop_auc.png", "AUC before, after retraining and of the oracle per scenario", plots)
    return plots


# -- pipelines, dashboard ---------------------------------------------------------------------------
def plot_pipelines(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    # Training's modes under their original keys, the retraining's prefixed; each pipeline in its own colour.
    modes = [m for m in ("direct", "kfp.local", "retraining direct", "retraining kfp.local")
             if isinstance(raw.get(m), dict)]
    plots: list[Plot] = []
    if not modes:
        return plots
    fig, ax = _figure(7, 1.2 + 0.6 * len(modes))
    med = [raw[m]["median"] for m in modes]
    err = [[raw[m]["median"] - raw[m]["min"] for m in modes], [raw[m]["max"] - raw[m]["median"] for m in modes]]
    labels = [m if m.startswith("retraining") else f"training {m}" for m in modes]
    colours = [("tab:green" if m.startswith("retraining") else "tab:blue") if "direct" in m
               else ("tab:red" if m.startswith("retraining") else "tab:orange") for m in modes]
    ax.barh(labels, med, xerr=err, capsize=4, color=colours)
    ax.invert_yaxis()  # in the table's order, top to bottom
    for i, (v, mode) in enumerate(zip(med, modes, strict=True)):
        ax.text(raw[mode]["max"], i, f"  {v:.1f} s", va="center", fontsize=9)  # right of the min-max bar
    ax.set_xlim(right=max(raw[m]["max"] for m in modes) * 1.2)
    ax.set_xlabel("wall time of the pipeline (s)")
    ax.set_title("Pipelines: steps called directly versus kfp.local")
    _save(fig, out_dir, "pipelines_overhead.png", "Training and retraining pipeline wall time: direct versus "
          "kfp.local", plots)
    return plots


def plot_dashboard(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    import statistics

    import numpy as np

    plots: list[Plot] = []
    kinds = [k for k in ("apptest", "browser") if raw.get(k)]
    if not kinds:
        return plots
    pages = list(raw[kinds[0]])
    fig, ax = _figure(7, 4)
    x = np.arange(len(pages))
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        values = [statistics.median(raw[kind][p]) if raw[kind].get(p) else 0 for p in pages]
        ax.bar(x - 0.4 + width * (j + 0.5), values, width=width,
               label={"apptest": "script run (AppTest)", "browser": "browser page load"}[kind])
    ax.set_xticks(x, pages)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"Dashboard page load with {raw.get('rows', 0):,} stored predictions")
    ax.legend()
    _save(fig, out_dir, "dashboard_pages.png", "Dashboard page load per page", plots)
    return plots


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Plot]]] = {
    "training": plot_training, "serving": plot_serving, "loop": plot_loop, "pipelines": plot_pipelines,
    "dashboard": plot_dashboard}
