"""The headline rows of each benchmark section for the summary table (``summary.md``, which the README's
"Benchmark results" section shows): [measurement, result, versus the anchor]. Read from the section's
``raw`` numbers; a key that is missing gives no row rather than an error."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from learning_machine.bench.plots import finite, loop_scenarios, median_of

if TYPE_CHECKING:
    from learning_machine.bench.report import Section

Row = list[Any]


def headlines(name: str, section: Section) -> list[Row]:
    """The summary rows of section ``name`` (a failed section gives one row saying so)."""
    if section.error:
        return [[f"{name}", "FAILED", section.error]]
    summarise = SUMMARIES.get(name)
    return summarise(section.raw) if summarise else []


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _x(value: float, base: float | None, what: str) -> str:
    return f"{value / base:.2f}x {what}" if base else "-"


def training(raw: dict[str, Any]) -> list[Row]:
    runs = raw.get("runs", {})
    rows: list[Row] = []
    for kind, slope in raw.get("loglog_slope", {}).items():
        points = sorted((v["rows"], v["median"]) for v in runs.values() if v["kind"] == kind)
        if not points:
            continue
        (small, t_small), (big, t_big) = points[0], points[-1]
        rows.append([f"Training {kind}, {big:,} rows (fit + evaluation)",
                     f"{t_big:.1f} s ({big / t_big:,.0f} rows/s)",
                     f"{t_big / t_small:.1f}x the time of {small:,} rows; time ~ rows^{slope:.2f}"
                     if slope is not None else "-"])
    return rows


def serving(raw: dict[str, Any]) -> list[Row]:
    from learning_machine.bench.serving import BUILTIN, FAST, GATEWAYS, OURS, PYFUNC, gateway_checks

    lat = raw.get("latency", {})
    tp = raw.get("throughput", {})
    batch = raw.get("batch", {})
    rows: list[Row] = []
    builtin = lat.get(BUILTIN, {}).get("p50")
    ours = lat.get(OURS, {}).get("p50")
    if builtin:
        rows.append([f"Serving one row, p50 (p99): {BUILTIN}", f"{_ms(builtin)} ({_ms(lat[BUILTIN]['p99'])})",
                     "anchor"])
    for name, base, what in ((OURS, builtin, "MLServer built-in sklearn runtime"),
                             (PYFUNC, ours, "MLServer direct (our runtime)"),
                             (FAST, ours, "MLServer direct (our runtime)")):
        if name in lat:
            rows.append([f"Serving one row, p50 (p99): {name}",
                         f"{_ms(lat[name]['p50'])} ({_ms(lat[name]['p99'])})", _x(lat[name]["p50"], base, what)])
    for clients in ("8", "32"):
        ours_tp = tp.get(OURS, {}).get(clients, {}).get("rps")
        base_tp = tp.get(BUILTIN, {}).get(clients, {}).get("rps")
        if ours_tp:
            rows.append([f"Requests/s, {clients} clients: our runtime", _rate(ours_tp),
                         _x(ours_tp, base_tp, "built-in sklearn runtime")])
    big = batch.get("1000", {})
    for name, what in ((OURS, BUILTIN), (PYFUNC, BUILTIN)):
        if name in big:
            rows.append([f"Rows/s in batches of 1,000: {name}", _rate(big[name]["rows_per_s"]),
                         _x(big[name]["rows_per_s"], big.get(what, {}).get("rows_per_s"), what)])
    # The gateways: one row per target, each compared with direct MLServer in this run and judged.
    checks = gateway_checks(raw)
    skipped = raw.get("skipped", {})
    for name, backend in GATEWAYS.items():
        for check in checks.get(name, []):
            rows.append([f"Gateway on {backend}: {check.what}", check.result,
                         f"{check.versus}; target {check.target}: {check.verdict}"])
        if name not in checks and name in skipped:
            rows.append([f"Gateway on {backend}", "not measured", skipped[name]])
        for n, by_gateway in raw.get("stages", {}).items():  # where its requests' time went (the report has 100)
            ms = by_gateway.get(name) if n in ("1", "1000") else None
            if ms:
                rows.append([f"Gateway on {backend}: where a {int(n):,}-row request's time goes (means)",
                             f"{_ms(ms['request'])}",
                             f"validate {_ms(ms.get('validate', 0.0))} + wait {_ms(ms.get('wait', 0.0))} + model call "
                             f"{_ms(ms.get('model', 0.0))} + store after the answers {_ms(ms.get('store', 0.0))} + rest "
                             f"{_ms(ms['rest'])}; store begun ahead {_ms(ms.get('store_ahead', 0.0))} (during the call)"])
    for method, stats in raw.get("explain", {}).items():
        if "via MLServer" in method:
            rows.append([f"Explanation p50: {method}", _ms(stats["p50"]), "-"])
    return rows


def loop(raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    alarms = raw.get("false_alarms_per_10k")
    # Either {"per_10k": x} (one detector) or {detector: {"per_10k": x}} (several side by side).
    per_detector = {"": alarms} if isinstance(alarms, dict) and "per_10k" in alarms else alarms
    if isinstance(per_detector, dict):
        found = {name: finite(v.get("per_10k") if isinstance(v, dict) else v) for name, v in per_detector.items()}
        text = ", ".join(f"{name + ' ' if name else ''}{v:.1f}" for name, v in found.items() if v is not None)
        if text:
            budget = finite(raw.get("false_alarm_budget_per_10k"))
            rows.append(["Loop: false alarms per 10,000 clean rows", text,
                         f"budget {budget:g}" if budget is not None else "-"])
    for scenario, values in loop_scenarios(raw).items():
        delay = median_of(values.get("delays"))
        # The bound that applies to a monitor whose outcomes arrive late, when the section gives it.
        late = finite(values.get("bound_labels_late_rows"))
        bound = late if late is not None else finite(values.get("bound_rows"))
        delays = values.get("delays")
        detected = f"{sum(d is not None for d in delays)}/{len(delays)} seeds" if isinstance(delays, list) else ""
        parts = []
        if "delays" in values:
            parts.append(f"delay {delay:,.0f} rows ({detected})" if delay is not None else f"not detected ({detected})")
        for key in sorted(k for k in values if k.endswith("_delays")):
            other = median_of(values[key])
            parts.append(f"{key.removesuffix('_delays').replace('_', ' ')} "
                         + (f"{other:,.0f} rows" if other is not None else "not detected"))
        aucs = {k.removeprefix("auc_"): median_of(v) for k, v in values.items() if k.startswith("auc_")}
        if aucs:
            parts.append("AUC " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items() if v is not None))
        versus = []
        if delay is not None and bound:
            versus.append(f"{delay / bound:.1f}x CUSUM bound ({bound:,.0f} rows"
                          + (", outcomes late" if late is not None else "") + ")")
        oracle, retrained = aucs.get("oracle"), aucs.get("retrained")
        if oracle is not None and retrained is not None:
            versus.append(f"retrained AUC {oracle - retrained:.3f} below the oracle's")
        rows.append([f"Loop, {scenario}", "; ".join(parts) or "-", "; ".join(versus) or "-"])
    # The whole loop on real services (full mode): {scenario: {"rows_to_...": n, "seconds_to_...": s, ...}}.
    recovery = raw.get("recovery")
    for scenario, values in (recovery.items() if isinstance(recovery, dict) else []):
        if not isinstance(values, dict):
            continue
        parts = [f"{key.removeprefix('rows_to_').replace('_', ' ')} after {values[key]:,.0f} rows"
                 for key in values if key.startswith("rows_to_") and finite(values[key]) is not None]
        parts += [f"{key.removeprefix('seconds_to_').replace('_', ' ')} after {values[key]:,.0f} s"
                  for key in values if key.startswith("seconds_to_") and finite(values[key]) is not None]
        if parts:
            rate = finite(values.get("rate"))
            rows.append([f"Loop end to end on the services, {scenario}"
                         + (f" ({rate:g} rows/s)" if rate else ""), "; ".join(parts), "-"])
    return rows


def pipelines(raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    # The training pipeline's modes keep their original keys; the retraining's are prefixed with its name.
    for name, prefix in (("Training", ""), ("Retraining", "retraining ")):
        local, direct = raw.get(f"{prefix}kfp.local"), raw.get(f"{prefix}direct")
        if not isinstance(local, dict) or not isinstance(direct, dict):
            continue
        rows.append([f"{name} pipeline under kfp.local", f"{local['median']:.1f} s",
                     f"{local['median'] / direct['median']:.1f}x the same steps called directly "
                     f"({direct['median']:.1f} s)"])
    return rows


def dashboard(raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind, label in (("browser", "browser page load"), ("apptest", "script run (AppTest)")):
        pages = {p: statistics.median(t) for p, t in (raw.get(kind) or {}).items() if t}
        if pages:
            slowest = max(pages, key=lambda p: pages[p])
            rows.append([f"Dashboard {label}, slowest page ({raw.get('rows', 0):,} predictions stored)",
                         f"{pages[slowest]:.2f} s ({slowest})", "-"])
    return rows


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "training": training, "serving": serving, "loop": loop, "pipelines": pipelines, "dashboard": dashboard}
