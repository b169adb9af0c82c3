"""Benchmark of the learning loop's statistics, per drift scenario of the generator, seeds fixed:
detection delay (rows after drift onset until the policy fires) and false alarms per 10,000 clean rows
for the configured detector and policy, next to the CUSUM lower bound for the same shift and false-alarm
rate; and AUC on post-drift data before and after retraining next to an oracle trained on post-drift data.

The monitor's own functions run here in process (windows, the drift detector the model server runs, the
policy); the services around them are measured by the end-to-end tests and the serving section."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from learning_machine.data.sources import LoadedDataset, load_dataset
from learning_machine.data.synthetic import SCENARIOS
from learning_machine.loop.monitor import performance_results
from learning_machine.loop.policy import RetrainPolicy, WindowSummary, decide
from learning_machine.model.drift_detector import detect, fit_detector
from learning_machine.model.evaluation import binary_metrics
from learning_machine.model.sequential import SequentialDetector, fit_sequential
from learning_machine.model.training import predict_proba, retrain_best, train_model

Progress = Callable[[str], None]
# The whole loop on the services (full run): where retraining pays a lot (concept drift) and where the possible
# gain is small (covariate and prevalence shifts), so the gate must not promote without the evidence.
RECOVERY_SCENARIOS = ("concept-drift", "covariate-shift", "prevalence-shift")
RECOVERY_ROWS_AFTER = 2400  # rows streamed after the onset unless a better model serves before (120 s at 20 rows/s)
FALSE_ALARM_BUDGET = 1.0  # per 10,000 rows: the setting LM_MONITOR_FALSE_ALARMS_PER_10K's default
WINDOW = 200
CLEAN_ROWS = 10_000
OUTCOME_DELAY = 100


@dataclass
class Detection:
    delay_rows: int | None
    rule: str | None


def _frame(scenario: str, rows: int, seed: int, drift_start: int) -> LoadedDataset:
    return load_dataset("synthetic-cohort", n_rows=rows, seed=seed, scenario=scenario, drift_start=drift_start)


def run_monitor(data: LoadedDataset, model: Any, detector: Any, policy: RetrainPolicy, *, drift_start: int,
                stop_at_first: bool = True) -> list[Detection]:
    """Windows over ``data`` in arrival order; outcomes arrive ``OUTCOME_DELAY`` rows late. Returns each
    time the policy fired (its delay after ``drift_start`` in rows); after a firing the history restarts."""
    frame = data.frame
    proba = predict_proba(model, data.spec, frame)
    windows: list[WindowSummary] = []
    fired: list[Detection] = []
    for end in range(WINDOW, len(frame) + 1, WINDOW):
        window = frame.iloc[end - WINDOW:end]
        drift = detect(detector, window[data.spec.feature_names])
        seen = max(0, end - OUTCOME_DELAY)
        labelled = frame.iloc[max(0, seen - 400):seen].assign(probability=proba[max(0, seen - 400):seen])
        _, auc = performance_results(data.spec, labelled) if len(labelled) >= 100 else ([], None)
        windows.append(WindowSummary(end // WINDOW, float(end), WINDOW, drift=bool(drift["is_drift"]),
                                     auc=auc, n_outcomes=len(labelled), n_events=int(labelled["outcome"].sum())))
        decision = decide(windows, policy, now=float(end), last_retrain_at=None)
        if decision.retrain:
            fired.append(Detection(end - drift_start, decision.rules[0]))
            if stop_at_first:
                break
            windows = []
    return fired


def run_sequential(data: LoadedDataset, model: Any, detector: SequentialDetector, *, drift_start: int,
                   stop_at_first: bool = True) -> list[Detection]:
    """The monitor's sequential test over ``data`` in arrival order: features row by row as predictions
    arrive, outcomes ``OUTCOME_DELAY`` rows later (the first ones calibrate the outcome stream). Returns
    every alarm with its delay after ``drift_start`` in rows of the stream (when the evidence had arrived)."""
    detector.reset()
    detector.rows_seen = detector.outcomes_seen = 0
    detector.outcome_threshold = None
    frame = data.frame
    proba = predict_proba(model, data.spec, frame)
    found = [Detection(a.row - drift_start, "features") for a in detector.update(frame)]
    outcomes = frame[data.spec.target.name].to_numpy()[:max(0, len(frame) - OUTCOME_DELAY)]
    found += [Detection(a.row + OUTCOME_DELAY - drift_start, "outcomes")
              for a in detector.update_outcomes(outcomes, proba[:len(outcomes)])]
    found.sort(key=lambda d: d.delay_rows or 0)
    if stop_at_first:  # the first alarm after the onset (earlier ones are false alarms, counted on clean data)
        return [d for d in found if (d.delay_rows or 0) >= 0][:1]
    return found


def kl_rate(before: pd.DataFrame, after: pd.DataFrame, columns: list[str], seed: int, *, folds: int = 5,
            iterations: int = 150) -> float:
    """KL divergence per row, KL(after || before), of the joint distribution of ``columns`` (features and
    outcome), estimated with a cross-fitted classifier: the mean log density ratio on the 'after' rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict

    x = pd.concat([before[columns], after[columns]], ignore_index=True)
    for column in x.columns:
        if x[column].dtype == object:
            x[column] = x[column].astype("category").cat.codes.replace(-1, np.nan)
    y = np.r_[np.zeros(len(before)), np.ones(len(after))]
    model = HistGradientBoostingClassifier(max_iter=iterations, learning_rate=0.05 * 150 / iterations,
                                           random_state=seed)
    p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    p = np.clip(p[len(before):], 1e-4, 1 - 1e-4)
    prior = len(after) / len(before)
    return max(float(np.mean(np.log(p / (1 - p)) - np.log(prior))), 1e-6)


def cusum_bound(kl_per_row: float, false_alarms_per_10k: float) -> float:
    """Lorden's lower bound on the worst-case mean detection delay, log(ARL) / KL, for a detector whose
    mean run length to a false alarm is ARL rows (10,000 / the false-alarm budget per 10,000 rows)."""
    arl = CLEAN_ROWS / false_alarms_per_10k
    return math.log(arl) / kl_per_row


def delayed_label_bound(kl_features: float, kl_joint: float, false_alarms_per_10k: float) -> float:
    """The bound for a monitor that sees features at once and outcomes ``OUTCOME_DELAY`` rows late: the
    better of watching the features alone and waiting for the outcomes to see the whole change."""
    return min(cusum_bound(kl_features, false_alarms_per_10k),
               OUTCOME_DELAY + cusum_bound(kl_joint, false_alarms_per_10k))


def _median(values: list[Any]) -> float:
    found = [v for v in values if v is not None]
    return float(statistics.median(found)) if found else float("nan")


def bench_loop(quick: bool, progress: Progress, *, budget: float = FALSE_ALARM_BUDGET) -> Any:
    from learning_machine.bench.report import Section

    seeds = [11] if quick else [11, 12, 13]
    policy = RetrainPolicy(drift_windows=2, auc_floor=0.70, min_outcomes=100, cooldown_s=0)
    reference = load_dataset("synthetic-cohort", n_rows=3000, seed=42)
    champion = train_model(reference, seed=1).pipeline
    detector = fit_detector(reference.spec, reference.frame)
    progress(f"calibrating the sequential detector to {budget:g} false alarm(s) per 10,000 rows")
    sequential = fit_sequential(reference.spec, reference.frame, false_alarms_per_10k=budget, seed=1)
    features = reference.spec.feature_names
    columns = [*features, reference.spec.target.name]

    progress(f"false alarms on {CLEAN_ROWS:,} clean rows x{len(seeds)}")
    clean = {s: _frame("none", CLEAN_ROWS, s, 0) for s in seeds}
    windowed_alarms = [len(run_monitor(clean[s], champion, detector, policy, drift_start=0, stop_at_first=False))
                       for s in seeds]
    sequential_alarms = [len(run_sequential(clean[s], champion, sequential, drift_start=0, stop_at_first=False))
                         for s in seeds]
    fa = {"CUSUM (sequential)": statistics.mean(sequential_alarms) * 10_000 / CLEAN_ROWS,
          "windowed TabularDrift": statistics.mean(windowed_alarms) * 10_000 / CLEAN_ROWS}
    section = Section("Learning loop: detection and recovery per drift scenario",
                      ["scenario", "detector", "detected by", "delay rows (median)", "CUSUM bound rows",
                       "bound, labels late", "delay / bound", "AUC before", "AUC retrained", "AUC oracle",
                       "gap to oracle"])
    section.raw["false_alarm_budget_per_10k"] = budget
    section.raw["false_alarms_per_10k"] = {"CUSUM (sequential)": {"runs": sequential_alarms,
                                                                  "per_10k": fa["CUSUM (sequential)"]},
                                           "windowed TabularDrift": {"runs": windowed_alarms,
                                                                     "per_10k": fa["windowed TabularDrift"]}}
    section.raw["sequential_detector"] = {"k": list(sequential.k), "threshold": sequential.threshold.tolist(),
                                          "streams": len(sequential.names) + 1}
    recoveries: dict[str, dict[str, Any]] = {}
    if not quick:  # the whole loop on real services: minutes per scenario, so the full run only
        for scenario in RECOVERY_SCENARIOS:
            recoveries[scenario] = recovery(scenario, progress)
            progress(f"[{scenario}] {recoveries[scenario]}")
    section.raw["recovery"] = recoveries
    if recoveries:
        section.tables.append(recovery_table(recoveries))
    drift_start, post = 1000, 2400
    for scenario in [s for s in SCENARIOS if s != "none"]:
        progress(f"scenario {scenario} x{len(seeds)}")
        delays: dict[str, list[int | None]] = {"CUSUM (sequential)": [], "windowed TabularDrift": []}
        rules: dict[str, list[str]] = {"CUSUM (sequential)": [], "windowed TabularDrift": []}
        kl_f, kl_j, before, after, oracle = [], [], [], [], []
        modes: list[str] = []
        for seed in seeds:
            data = _frame(scenario, drift_start + post, seed, drift_start)
            for name, found in (("CUSUM (sequential)", run_sequential(data, champion, sequential,
                                                                       drift_start=drift_start)),
                                ("windowed TabularDrift", run_monitor(data, champion, detector, policy,
                                                                      drift_start=drift_start))):
                delays[name].append(found[0].delay_rows if found else None)
                rules[name].append((found[0].rule or "?") if found else "not detected")
            kl_rows, kl_fit = (2500, {"folds": 3, "iterations": 100}) if quick else (4000, {})
            pre = _frame("none", kl_rows, seed + 100, 0).frame
            after_rows = _frame(scenario, kl_rows, seed + 100, 0).frame
            kl_f.append(kl_rate(pre, after_rows, features, seed, **kl_fit))
            kl_j.append(kl_rate(pre, after_rows, columns, seed, **kl_fit))
            # Retrain as the loop does: the rows since the change, three candidates (the champion continued
            # on 1,000 old rows plus them, a fresh model on them and a simpler one), the best on unseen new rows.
            recent = LoadedDataset(reference.spec, data.frame.iloc[drift_start:].reset_index(drop=True), "bench", {})
            chosen, _ = retrain_best(champion, recent, reference.frame.sample(1000, random_state=seed), seed=seed)
            retrained = chosen.pipeline
            modes.append(chosen.mode)
            oracle_model = train_model(_frame(scenario, 5000, seed + 200, 0), seed=seed).pipeline
            test = _frame(scenario, 3000, seed + 300, 0).frame
            y = test["outcome"].to_numpy()
            before.append(binary_metrics(y, predict_proba(champion, reference.spec, test))["auc"])
            after.append(binary_metrics(y, predict_proba(retrained, reference.spec, test))["auc"])
            oracle.append(binary_metrics(y, predict_proba(oracle_model, reference.spec, test))["auc"])
        bound = cusum_bound(statistics.median(kl_j), budget)
        late = delayed_label_bound(statistics.median(kl_f), statistics.median(kl_j), budget)
        aucs = [statistics.median(before), statistics.median(after), statistics.median(oracle)]
        for name in delays:
            delay = _median(delays[name])
            section.rows.append([scenario, name, max(set(rules[name]), key=rules[name].count), delay, bound, late,
                                 delay / late if delay == delay else "-", *aucs, aucs[2] - aucs[1]])
        section.raw[scenario] = {"delays": delays["CUSUM (sequential)"], "rules": rules["CUSUM (sequential)"],
                                 "windowed_delays": delays["windowed TabularDrift"],
                                 "windowed_rules": rules["windowed TabularDrift"],
                                 "kl_per_row": kl_j, "kl_features_per_row": kl_f, "bound_rows": bound,
                                 "bound_labels_late_rows": late,
                                 "auc_before": before, "auc_retrained": after, "auc_oracle": oracle,
                                 "retrain_mode": modes}
    ks = " and ".join(f"{k:g}" for k in sequential.k)
    hs = " and ".join(f"{h:.1f}" for h in sequential.threshold)
    section.notes += [
        f"False-alarm budget {budget:g} per 10,000 rows (LM_MONITOR_FALSE_ALARMS_PER_10K). Measured on "
        f"{CLEAN_ROWS:,} clean rows x{len(seeds)}: CUSUM {fa['CUSUM (sequential)']:.2f} per 10,000 "
        f"(runs: {sequential_alarms}), windowed {fa['windowed TabularDrift']:.2f} (runs: {windowed_alarms}; it has no "
        "budget setting: its rate follows from p < 0.05 and 2 windows).",
        f"CUSUM (sequential): the monitor's learning_machine.model.sequential detector: a CUSUM per encoded feature "
        f"(two charts per stream, k = {ks} sd, thresholds {hs}, calibrated by bootstrap to the budget) and "
        f"one on the model's excess log-loss once outcomes arrive ({OUTCOME_DELAY} rows late; the first 500 "
        "calibrate it). Windowed: TabularDrift (KS / chi-squared, Bonferroni, p < 0.05) on windows of "
        f"{WINDOW} rows, drift in 2 consecutive windows or realised AUC < 0.70. Drift starts at row {drift_start}; "
        f"seeds {seeds}.",
        "CUSUM bound: log(ARL) / KL per row (Lorden), ARL = 10,000 / budget, KL of the joint (features, outcome) "
        "distribution after versus before the shift, estimated with a cross-fitted gradient-boosting classifier. "
        f"'Bound, labels late' is what any monitor can reach when outcomes arrive {OUTCOME_DELAY} rows after the "
        "prediction: the smaller of the bound on the features alone and the outcome delay plus the joint bound. "
        "'delay / bound' divides by it.",
        "End to end (full run only, scenarios " + ", ".join(RECOVERY_SCENARIOS) + "): the whole embedded loop on "
        "real services (MLflow, MLServer, the gateway as processes; the monitor stepping every second with the "
        "retraining beside it, the `retraining` pipeline under kfp.local; the local deployer's hot swap), a fresh "
        f"first champion, records streamed at 20 rows/s from row 0 with the change at row 600, outcomes "
        f"{OUTCOME_DELAY} rows late, seed 5, for {RECOVERY_ROWS_AFTER:,} rows after the onset (less once a better "
        "model serves). Rows and seconds from the first changed record to the first alarm (`retrain-fired`), to "
        "the gate's first decision (promoted or refused, on paired evidence with 95 % intervals and "
        "non-inferiority margins per subgroup), and to the first prediction answered by a promoted version. AUC on "
        "3,000 fresh post-change rows: the first champion, the version serving at the end, and an oracle trained "
        "on 5,000 post-change rows." + (" Not measured in this run." if not recoveries else ""),
        "AUC on 3,000 fresh post-drift rows: the champion (trained on 3,000 clean rows); the retrained model as the "
        f"loop makes it from the {post:,} post-drift rows it would have (the best, on a fifth of them it did not "
        "train on, of the champion continued on 1,000 old rows plus them, a fresh model on them and a fresh one at "
        "lower capacity); and an oracle trained from scratch on 5,000 post-drift rows with the default capacity "
        "(the lower-capacity fresh model can beat it).",
    ]
    return section


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recovery(scenario: str, progress: Progress, *, rate: float = 20.0, drift_start: int = 600,
             rows_after: int = RECOVERY_ROWS_AFTER, timeout_s: float = 900.0, seed: int = 5,
             **overrides: Any) -> dict[str, Any]:
    """The whole embedded loop on real parts, timed: MLflow, MLServer, the gateway (processes), the monitor
    stepping every second in this process with retraining beside it (the `retraining` pipeline under
    kfp.local), the local deployer's hot swap. Records stream at ``rate`` rows/s with the drift from row
    ``drift_start`` for ``rows_after`` rows (less once a better model serves), outcomes 100 rows late. Returns
    rows and seconds from the onset to the first alarm, the gate's first decision and the first prediction of
    a promoted version; the retraining runs and decisions; the AUC of the first champion, the promoted version
    and an oracle on fresh post-change rows. ``overrides``: settings to try instead of the defaults."""
    import tempfile
    import threading
    import time
    from pathlib import Path

    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.embedded.processes import ProcessManager
    from learning_machine.embedded.stack import mlflow_service, start_serving
    from learning_machine.lifecycle.training import train_and_register
    from learning_machine.loop.service import LoopService
    from learning_machine.loop.stream import StreamPlan, generated_records, run_stream
    from learning_machine.registry.names import CHAMPION
    from learning_machine.registry.tracker import Tracker
    from learning_machine.settings import Settings

    max_rows = drift_start + rows_after
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lm-bench-loop-") as tmp:
        home = Path(tmp)
        settings = Settings(
            home=home, mlflow_port=_free_port(), mlflow_workers=1, model_name=f"bench-loop-{scenario}",
            train_rows=2000, seed=42, model_server_port=_free_port(), model_server_grpc_port=_free_port(),
            model_server_metrics_port=_free_port(), model_ref=CHAMPION, gateway_port=_free_port(),
            database_url=f"sqlite:///{home / 'lm.db'}", deployer="local", pipeline_runner="local",
            loop_retrain_rows=1500, loop_reference_rows=1000, **overrides)  # the loop's own defaults otherwise
        manager = ProcessManager(settings.run_dir)
        stop = threading.Event()
        try:
            progress(f"[{scenario}] starting MLflow, training the first champion, the model server and the gateway")
            manager.start(mlflow_service(settings), timeout_s=settings.startup_timeout_s)
            tracker = Tracker(settings.tracking_uri)
            first = train_and_register(settings, tracker, load_dataset("synthetic-cohort", n_rows=2000, seed=42),
                                       promote="if-first").version.version
            tokens = start_serving(settings, manager)
            client = LearningMachineClient(settings.gateway_url, tokens["data-scientist"], timeout_s=120)
            # The loop writes results, events and its state: the monitor's role, not a data scientist's.
            def loop_progress(message: str) -> None:
                if not message.startswith("window "):  # every window is noise here; alarms and decisions are not
                    progress(f"[{scenario}] {message}")

            service = LoopService(settings, LearningMachineClient(settings.gateway_url, tokens["monitor"],
                                                                  timeout_s=120), tracker=tracker,
                                  progress=loop_progress)
            prefix = f"R{seed}-"

            def source() -> Any:
                for item in generated_records(max_rows, seed=seed, scenario=scenario, drift_start=drift_start,
                                              id_prefix=prefix):
                    if stop.is_set():
                        return
                    yield item

            plan = StreamPlan(rows=max_rows, batch_size=max(1, int(rate // 5)), rate=rate,
                              outcome_delay_rows=OUTCOME_DELAY, drain_outcomes=False)
            sender = threading.Thread(target=run_stream, args=(client, source(), plan), daemon=True)
            progress(f"[{scenario}] streaming {max_rows:,} rows at {rate:g} rows/s, drift from row {drift_start}")
            sender.start()
            deadline = time.monotonic() + timeout_s
            promoted: str | None = None
            said: set[int] = set()
            while time.monotonic() < deadline and sender.is_alive():
                decision = service.step()
                if decision is not None and decision.retrain and id(decision) not in said:
                    said.add(id(decision))  # a decision waiting for outcomes comes back at every step
                    progress(f"[{scenario}] retraining fired ({', '.join(decision.rules)}): {decision.reasons[0]}")
                champion = tracker.alias_version(settings.model_name, CHAMPION)
                if champion is not None and champion.version != first and promoted is None:
                    promoted = champion.version
                    progress(f"[{scenario}] v{promoted} promoted")
                if promoted is not None:
                    served = client.feed(after_id=max(0, service.cursor - 50), limit=100)["items"]
                    if any(i["model_version"] == promoted for i in served):
                        break
                time.sleep(1.0)
            stop.set()
            sender.join(timeout=30)
            if service.job is not None:  # a retraining still running when the stream ended: let it finish
                service.wait_retraining(timeout_s=300)
                service.step()
            items: list[dict[str, Any]] = []
            after = 0
            while True:
                page = client.feed(after_id=after, limit=5000)
                items += page["items"]
                if not page["items"]:
                    break
                after = int(page["next_after_id"])
            events: list[dict[str, Any]] = []
            while True:  # every event, oldest last, page by page
                got = client.page("/v1/events", limit=500, offset=len(events))["items"]
                events += got
                if len(got) < 500:
                    break
            final = tracker.alias_version(settings.model_name, CHAMPION)
            for version in {first, final.version if final else first}:
                models[version] = tracker.load_pipeline(settings.model_name, version)[0]
            client.close()
            service.client.close()
        finally:
            stop.set()
            for name in ("gateway", "model-server", "mlflow"):
                manager.stop(name)

    def row_of(item: dict[str, Any]) -> int:
        return int(str(item["record_id"]).removeprefix(prefix))

    def when(item: dict[str, Any]) -> float:
        return float(pd.Timestamp(item["created_at"]).timestamp())

    onset = next((i for i in items if row_of(i) >= drift_start), None)
    events.sort(key=lambda e: int(e["id"]))

    def first_event(*kinds: str) -> dict[str, Any] | None:
        return next((e for e in events if e["kind"] in kinds), None)

    def rows_at(event: dict[str, Any] | None) -> int | None:
        """Rows predicted after the onset when ``event`` was recorded."""
        if event is None:
            return None
        return max((row_of(i) for i in items if when(i) <= when(event)), default=0) - drift_start

    def seconds_at(item: dict[str, Any] | None) -> float | None:
        return None if item is None or onset is None else round(when(item) - when(onset), 1)

    alarm, decided = first_event("retrain-fired"), first_event("promoted", "refused")
    serving = next((i for i in items if promoted is not None and i["model_version"] == promoted), None)
    result: dict[str, Any] = {
        "scenario": scenario, "rate": rate, "drift_start": drift_start, "rows_streamed": len(items),
        "promoted": promoted, "fired_by": alarm["detail"].get("rules") if alarm else None,
        "rows_to_alarm": rows_at(alarm), "seconds_to_alarm": seconds_at(alarm),
        "rows_to_decision": rows_at(decided), "seconds_to_decision": seconds_at(decided),
        "first_decision": decided["kind"] if decided else None,
        "retraining_runs": sum(e["kind"] == "retrain-started" for e in events),
        "decisions": [e["kind"] for e in events if e["kind"] in ("promoted", "refused")],
        "held": sum(e["kind"] == "retrain-held" for e in events),
        "gate_evidence": [e["detail"].get("evidence") or e["detail"].get("reason") for e in events
                          if e["kind"] in ("promoted", "refused", "gate-undecided", "shadow-look")],
        # what happened, oldest first: (kind, model version)
        "events": [(e["kind"], e.get("model_version")) for e in events]}
    if serving is not None:
        result["rows_to_serving"] = row_of(serving) - drift_start
        result["seconds_to_serving"] = seconds_at(serving)
    # AUC on fresh post-change rows: the first champion, what serves at the end, an oracle trained on 5,000.
    test = _frame(scenario, 3000, seed + 300, 0)
    y = test.frame["outcome"].to_numpy()
    oracle = train_model(_frame(scenario, 5000, seed + 200, 0), seed=seed).pipeline
    result["auc_champion"] = binary_metrics(y, predict_proba(models[first], test.spec, test.frame))["auc"]
    result["auc_serving_at_end"] = binary_metrics(y, predict_proba(models[final.version if final else first],
                                                                   test.spec, test.frame))["auc"]
    result["auc_oracle"] = binary_metrics(y, predict_proba(oracle, test.spec, test.frame))["auc"]
    return result


def recovery_table(recoveries: dict[str, dict[str, Any]]) -> Any:
    """The end-to-end runs as a table: onset to alarm, to the gate's decision, to a better model serving."""
    from learning_machine.bench.report import Table

    def pair(values: dict[str, Any], what: str) -> str:
        rows, seconds = values.get(f"rows_to_{what}"), values.get(f"seconds_to_{what}")
        return "-" if rows is None else f"{rows:,} rows / {seconds:.0f} s" if seconds is not None else f"{rows:,} rows"

    table = Table("End to end on the services: onset to alarm, decision and a better model serving",
                  ["scenario", "alarm (rule)", "gate's first decision", "better model serving", "retraining runs",
                   "decisions", "AUC first champion", "AUC serving at end", "AUC oracle", "gap to oracle"])
    for scenario, v in recoveries.items():
        table.rows.append([scenario, pair(v, "alarm") + (f" ({', '.join(v['fired_by'])})" if v.get("fired_by") else ""),
                           pair(v, "decision") + (f" ({v['first_decision']})" if v.get("first_decision") else ""),
                           pair(v, "serving"), v.get("retraining_runs", 0), ", ".join(v.get("decisions") or []) or "-",
                           v.get("auc_champion"), v.get("auc_serving_at_end"), v.get("auc_oracle"),
                           (v["auc_oracle"] - v["auc_serving_at_end"]) if "auc_oracle" in v else "-"])
    return table
