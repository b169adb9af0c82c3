"""The dashboard's logic as plain functions of a gateway client: each returns data frames, charts or
plain values, and raises the platform's errors. The Streamlit pages (`dashboard/app.py`) only lay them
out and turn errors into messages. Everything comes from the gateway's REST API."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.errors import LearningMachineError
from learning_machine.lifecycle.label import fact_text

ADMIN, DATA_SCIENTIST, CLINICIAN = "admin", "data-scientist", "clinician"
# The events marked on the timelines: the decisions a reader looks for (the rest, e.g. each shadow look, is in
# the events table; marking all of them made the labels unreadable).
RETRAIN_KINDS = ("retrain-requested", "retrain-fired", "retrain-failed", "shadow-started", "promoted", "refused",
                 "rolled-back")
# Events that carry the gate's paired evidence (differences with their intervals, clause by clause).
GATE_KINDS = ("promoted", "refused", "gate-undecided", "shadow-look")
MAX_HISTORY_ROWS = 2000  # monitoring rows read per kind: 500 a page, newest first


# -- connection ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    """Where the dashboard finds the gateway and MLflow's UI, and the token it starts with."""

    gateway_url: str
    token: str
    mlflow_url: str
    token_source: str


def default_connection() -> Connection:
    """From the environment: ``LM_DASHBOARD_GATEWAY_URL`` (else the gateway's host and port). No token is
    handed to whoever opens the page: users sign in with their own (pasted, or the ``?token=`` link of
    `lm dashboard-link`). ``LM_TOKEN`` prefills it only on a dashboard bound to loopback (one user's laptop)."""
    from learning_machine.settings import load_settings

    settings = load_settings()
    url = settings.dashboard_gateway_url or settings.gateway_url
    mlflow = settings.dashboard_mlflow_url or settings.tracking_uri
    token = settings.token.get_secret_value() if settings.token and is_loopback(settings.dashboard_host) else ""
    return Connection(url, token, mlflow.rstrip("/"), "LM_TOKEN" if token else "none")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def explain_error(exc: Exception) -> str:
    """A message a first-time user understands, for any error the gateway client raises."""
    if isinstance(exc, GatewayError):
        if exc.status == 401:
            return "The gateway does not accept this token (missing, unknown or revoked). Paste a valid token in the sidebar."
        if exc.status == 403:
            return f"Your token's role may not do this: {exc.message}"
        if exc.status == 404 and "model" in exc.message.lower():
            return f"No model yet: {exc.message}. Train one with `lm train` (or `make up`)."
        if exc.status == 503:
            return f"A service behind the gateway is unavailable: {exc.message}"
        return f"The gateway answered {exc.status}: {exc.message}"
    if isinstance(exc, LearningMachineError):
        return f"{exc.message}. Is the gateway running? Start everything with `make up`."
    return f"{type(exc).__name__}: {exc}"


def whoami(client: LearningMachineClient) -> dict[str, Any]:
    return client.whoami()


# -- patients --------------------------------------------------------------------------------------
def patients_table(client: LearningMachineClient, search: str | None = None, limit: int = 100,
                   offset: int = 0) -> tuple[pd.DataFrame, int]:
    """The stored records, newest first: arrival time, latest prediction, outcome; and how many match."""
    page = client.page("/v1/patients", search=search or None, limit=limit, offset=offset)
    rows = []
    for item in page["items"]:
        p = item.get("latest_prediction") or {}
        o = item.get("outcome") or {}
        rows.append({"record_id": item["record_id"], "arrived": pd.to_datetime(item.get("received_at"), utc=True),
                     "risk": p.get("probability"), "predicted": p.get("label"), "model_version": p.get("model_version"),
                     "outcome": o.get("outcome")})
    columns = ["record_id", "arrived", "risk", "predicted", "model_version", "outcome"]
    return pd.DataFrame(rows, columns=columns), int(page["total"])


def send_records(client: LearningMachineClient, n: int, *, scenario: str = "none", batch_size: int = 100) -> list[dict[str, Any]]:
    """Send ``n`` new synthetic patients for prediction (no outcomes: those arrive later)."""
    from learning_machine.loop.stream import generated_records

    prefix = f"dash-{uuid.uuid4().hex[:6]}-"
    records = [r for r, _ in generated_records(n, seed=uuid.uuid4().int % 2**31, scenario=scenario, drift_start=0,
                                               id_prefix=prefix)]
    answers: list[dict[str, Any]] = []
    for i in range(0, len(records), batch_size):
        answers.extend(client.predict(records[i:i + batch_size]))
    return answers


@dataclass
class Simulation:
    """A simulated clinic in a background thread: `run_stream` over generated records until stopped."""

    scenario: str
    rate: float
    rows: int
    send_outcomes: bool
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    report: Any = None
    error: str | None = None
    sent: int = 0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, gateway_url: str, token: str) -> None:
        self.thread = threading.Thread(target=self._run, args=(gateway_url, token), name="lm-simulation", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout_s)

    def _source(self) -> Iterator[tuple[dict[str, Any], int | None]]:
        from learning_machine.loop.stream import generated_records

        prefix = f"sim-{uuid.uuid4().hex[:6]}-"
        for item in generated_records(self.rows, seed=uuid.uuid4().int % 2**31, scenario=self.scenario,
                                      drift_start=0, id_prefix=prefix):
            if self.stop_event.is_set():
                return  # run_stream sees the source end and stops cleanly
            self.sent += 1
            yield item

    def _run(self, gateway_url: str, token: str) -> None:
        from learning_machine.loop.stream import StreamPlan, run_stream

        try:
            with LearningMachineClient(gateway_url, token) as client:
                plan = StreamPlan(rows=self.rows, batch_size=max(1, int(self.rate // 5)), rate=self.rate,
                                  outcome_delay_rows=50, send_outcomes=self.send_outcomes, drain_outcomes=False)
                self.report = run_stream(client, self._source(), plan)
        except Exception as exc:  # noqa: BLE001 - shown on the page; a thread must not die silently
            self.error = explain_error(exc)

    def status(self) -> str:
        if self.error:
            return f"stopped with an error: {self.error}"
        if self.running:
            return f"running: {self.sent:,} of {self.rows:,} records sent ({self.scenario}, {self.rate:g} rows/s)"
        if self.report is not None:
            return "finished: " + self.report.summary()
        return "not started"


# -- clinician -------------------------------------------------------------------------------------
def patient_view(client: LearningMachineClient, record_id: str) -> dict[str, Any]:
    """One patient: features, latest prediction, outcome and the stored explanations (by method, for the
    version that made the latest prediction)."""
    patient = client.patient(record_id)
    latest = patient["predictions"][0] if patient["predictions"] else None
    version = latest["model_version"] if latest else None
    explanations: dict[str, dict[str, Any]] = {}
    for e in patient["explanations"]:  # newest first
        if e["method"] not in explanations and (version is None or e["model_version"] == version):
            explanations[e["method"]] = e["explanation"]
    return {"record_id": record_id, "features": patient["features"], "prediction": latest,
            "outcome": (patient.get("outcome") or {}).get("outcome"), "explanations": explanations,
            "received_at": patient.get("received_at")}


def explanation(client: LearningMachineClient, view: dict[str, Any], method: str) -> dict[str, Any]:
    """The stored explanation of ``method``, else a new one from the gateway (stored there too)."""
    if method not in view["explanations"]:
        view["explanations"][method] = client.explain(view["record_id"], method)["explanation"]
    return _unwrap(view["explanations"][method])


def _unwrap(explanation: dict[str, Any]) -> dict[str, Any]:
    """The explainer answers in alibi's shape (``{"meta": ..., "data": {...}}``): the content is in ``data``."""
    data = explanation.get("data")
    return dict(data) if isinstance(data, dict) else dict(explanation)


def risk_band(card: dict[str, Any] | None, probability: float) -> dict[str, Any] | None:
    """The uncertainty of a predicted risk, from the serving version's calibration on held-out patients:
    among test patients in the same risk band, the observed event rate with a 95% Wilson interval."""
    table = (card or {}).get("calibration") or []
    if not table:
        return None
    row = min(table, key=lambda r: abs(r["mean_predicted"] - probability))
    n, rate = int(row["n"]), float(row["observed"])
    low, high = wilson(rate, n)
    return {"observed": rate, "low": low, "high": high, "n": n, "band_mean": float(row["mean_predicted"])}


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def contributions_frame(exact: dict[str, Any]) -> pd.DataFrame:
    """Per-feature contributions (log-odds), largest effect first, with the patient's value."""
    values = exact.get("values", {})
    frame = pd.DataFrame([{"feature": f, "contribution": float(v), "value": values.get(f)}
                          for f, v in exact.get("attributions", {}).items()])
    if frame.empty:
        return frame
    frame["direction"] = frame["contribution"].map(lambda v: "raises risk" if v > 0 else "lowers risk")
    frame["value"] = frame["value"].map(lambda v: "missing" if v is None else str(v))
    return frame.reindex(frame["contribution"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def contributions_chart(frame: pd.DataFrame) -> Any:
    import altair as alt  # here, not at import: altair loads jsonschema, which the views need not

    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("contribution:Q", title="contribution to the risk (log-odds)"),
        y=alt.Y("feature:N", sort=list(frame["feature"]), title=None, axis=alt.Axis(labelOverlap=False)),
        color=alt.Color("direction:N", scale=alt.Scale(domain=["raises risk", "lowers risk"],
                                                       range=["#d62728", "#1f77b4"]), legend=alt.Legend(title=None)),
        tooltip=["feature", "value", alt.Tooltip("contribution:Q", format=".3f")],
    ).properties(height=alt.Step(24))


def anchor_sentence(anchors: dict[str, Any]) -> str:
    """The anchor rule in plain words, with its precision and coverage."""
    rule = list(anchors.get("anchor") or [])
    outcome = "a high risk (the outcome is expected)" if anchors.get("prediction") == 1 else "a low risk (no outcome expected)"
    precision, coverage = float(anchors.get("precision", float("nan"))), float(anchors.get("coverage", float("nan")))
    if not rule:
        return (f"The model predicts {outcome} for almost every patient, whatever their values: no condition was "
                f"needed (precision {precision:.0%}).")
    conditions = " and ".join(rule)
    return (f"As long as {conditions}, the model predicts {outcome}: it did so for {precision:.0%} of similar "
            f"patients (precision), and {coverage:.0%} of the reference population meet these conditions "
            f"(coverage).")


def values_against_reference(card: dict[str, Any] | None, features: dict[str, Any]) -> pd.DataFrame:
    """Each of the patient's values next to the reference population's range (5th–95th percentile of the
    serving version's training data), flagged when outside it or outside the valid range."""
    rows = []
    for f in (card or {}).get("features", []):
        value = features.get(f["name"])
        ref = f.get("reference") or {}
        if "p5" in ref:
            typical = f"{ref['p5']:.4g} – {ref['p95']:.4g} (median {ref['median']:.4g})"
            if value is None:
                flag = "missing"
            elif float(value) < ref["p5"]:
                flag = "below the usual range"
            elif float(value) > ref["p95"]:
                flag = "above the usual range"
            else:
                flag = "usual"
        elif "shares" in ref:
            typical = ", ".join(f"{k} {v:.0%}" for k, v in ref["shares"].items())
            share = ref["shares"].get(str(value))
            flag = "missing" if value is None else ("rare (<5%)" if share is None or share < 0.05 else "usual")
        else:
            typical, flag = "no reference saved with this model", ""
        shown = "missing" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)
        rows.append({"feature": f["name"], "value": shown, "unit": f.get("unit") or "",
                     "reference population (5th–95th pct)": typical, "": flag, "meaning": f.get("description", "")})
    return pd.DataFrame(rows)


def label_view(facts: dict[str, Any]) -> dict[str, Any]:
    """A version's model-facts label (``GET /v1/models/{version}/label``) laid out for the page: each Sendak
    section as lines of text or a table (overall and per-subgroup performance with their intervals)."""
    def lines(part: dict[str, Any]) -> list[tuple[str, str]]:
        return [(k, fact_text(v)) for k, v in part.items()]

    validation = dict(facts.get("validation") or {})
    overall_metrics = validation.pop("overall", {}) or {}
    versus = validation.pop("against champion", None)
    overall = pd.DataFrame([{"metric": k, "value": overall_metrics.get(k),
                             "95% interval": _ci(overall_metrics) if k == "auc" else ""}
                            for k in ("auc", "brier", "log_loss", "ece", "prevalence", "n")
                            if overall_metrics.get(k) is not None])
    versus_rows = [{"metric": m, "candidate - champion": (versus.get(m) or {}).get("diff"),
                    "95% interval": _interval(versus.get(m) or {})} for m in ("auc", "log_loss", "brier")] \
        if versus else []
    subgroups = pd.DataFrame([{"subgroup": r["subgroup"], "group": r["group"], "n": r.get("n"), "auc": r.get("auc"),
                               "95% interval": _ci(r), "brier": r.get("brier"), "prevalence": r.get("prevalence")}
                              for r in facts.get("subgroups") or []],
                             columns=["subgroup", "group", "n", "auc", "95% interval", "brier", "prevalence"])
    return {"title": f"{facts.get('summary', {}).get('model')}", "summary": lines(facts.get("summary") or {}),
            "mechanism": lines(facts.get("mechanism") or {}), "validation": lines(validation), "overall": overall,
            "versus": pd.DataFrame(versus_rows), "versus_champion": (versus or {}).get("champion"),
            "uses": lines(facts.get("uses") or {}), "warnings": list(facts.get("warnings") or []),
            "subgroups": subgroups, "other": lines(facts.get("other") or {})}


def label_diff_view(changes: dict[str, Any]) -> dict[str, Any]:
    """The diff of two versions' labels (``GET /v1/models/{version}/label/diff``) as tables: overall and
    per-subgroup metrics (old, new, new minus old) and the other fields that changed."""
    def rows(deltas: dict[str, Any], **key: Any) -> list[dict[str, Any]]:
        return [{**key, "metric": m, "old": d.get("old"), "new": d.get("new"), "change": d.get("delta")}
                for m, d in deltas.items() if isinstance(d, dict) and m != "n"]

    overall = pd.DataFrame(rows(changes.get("overall") or {}), columns=["metric", "old", "new", "change"])
    per_group = [r for g in changes.get("subgroups") or [] for r in
                 rows({k: v for k, v in g.items() if k not in ("subgroup", "group")}, subgroup=g["subgroup"],
                      group=g["group"]) if r["metric"] == "auc"]
    subgroups = pd.DataFrame(per_group, columns=["subgroup", "group", "metric", "old", "new", "change"])
    changed = pd.DataFrame([{"field": k, "old": fact_text(v[0]), "new": fact_text(v[1])}
                            for k, v in (changes.get("changed") or {}).items()], columns=["field", "old", "new"])
    return {"from": changes.get("from"), "to": changes.get("to"), "overall": overall, "subgroups": subgroups,
            "changed": changed, "warnings": changes.get("warnings") or {"added": [], "removed": []}}


def md_escape(text: Any) -> str:
    """Text shown through Streamlit's Markdown as written (no emphasis, links or headings made of it)."""
    out = str(text).replace("\n", " ")
    for char in "\\`*_{}[]<>()#+!|~$":
        out = out.replace(char, "\\" + char)
    return out


def _ci(row: dict[str, Any]) -> str:
    low, high = row.get("auc_low"), row.get("auc_high")
    return f"{low:.3f} to {high:.3f}" if low is not None and high is not None else ""


def _interval(d: dict[str, Any]) -> str:
    low, high = d.get("low"), d.get("high")
    return f"{low:+.4f} to {high:+.4f}" if low is not None and high is not None else ""


# -- data scientist --------------------------------------------------------------------------------
def _all(client: LearningMachineClient, path: str, max_rows: int = MAX_HISTORY_ROWS, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while len(items) < max_rows:
        page = client.page(path, limit=min(500, max_rows - len(items)), offset=len(items), **params)
        items.extend(page["items"])
        if len(items) >= int(page["total"]) or not page["items"]:
            break
    return items


def monitoring_frame(client: LearningMachineClient, kind: str, max_rows: int = MAX_HISTORY_ROWS) -> pd.DataFrame:
    """The monitor's results of one kind (drift, quality, performance), oldest first."""
    items = _all(client, "/v1/monitoring", max_rows, kind=kind)
    columns = ["created_at", "metric", "feature", "value", "threshold", "alert", "model_version", "window_rows"]
    frame = pd.DataFrame(items, columns=[*columns, "details"])
    if frame.empty:
        return frame
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    frame["window"] = frame["details"].map(lambda d: (d or {}).get("window_id"))
    frame["n"] = frame["details"].map(lambda d: (d or {}).get("n"))
    frame["feature"] = frame["feature"].fillna("overall")
    return frame.sort_values("created_at").reset_index(drop=True)


def events_frame(client: LearningMachineClient, max_rows: int = 500) -> pd.DataFrame:
    """Pipeline and lifecycle events, newest first, with a one-line reason."""
    items = _all(client, "/v1/events", max_rows)
    frame = pd.DataFrame(items, columns=["created_at", "kind", "model_version", "detail"])
    if frame.empty:
        return frame
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    frame["reason"] = frame["detail"].map(_reason)
    return frame


def gate_frame(events: pd.DataFrame) -> pd.DataFrame:
    """The gate's decisions, newest first: what was decided, why, and the paired evidence with its intervals
    (candidate minus champion) and each clause's verdict."""
    columns = ["created_at", "kind", "model_version", "decision", "evidence", "clauses"]
    if events.empty or "detail" not in events:
        return pd.DataFrame(columns=columns)
    found = events[events["kind"].isin(GATE_KINDS)].copy()
    found["decision"] = found["detail"].map(lambda d: str((d or {}).get("gate") or (d or {}).get("reason") or ""))
    found["evidence"] = found["detail"].map(lambda d: str((d or {}).get("evidence") or ""))
    found["clauses"] = found["detail"].map(lambda d: str((d or {}).get("clauses") or ""))
    found = found[(found["evidence"] != "") | (found["clauses"] != "") | found["decision"].str.contains(r"\[")]
    return found[columns].reset_index(drop=True)


def _reason(detail: Any) -> str:
    d = detail or {}
    if d.get("reasons"):
        return "; ".join(str(r) for r in d["reasons"])
    for key in ("reason", "error"):
        if d.get(key):
            return str(d[key])
    if "from" in d or "to" in d:
        return f"v{d.get('from')} → v{d.get('to')}"
    return json.dumps(d, default=str)[:160]


def timeline_chart(frame: pd.DataFrame, events: pd.DataFrame, *, y_title: str, color: str = "feature",
                   threshold: float | None = None, log_y: bool = False, zero: bool = True, dash: str | None = None,
                   dash_domain: list[str] | None = None) -> Any:
    """A metric over time, one line per ``color`` value (and ``dash`` value: solid for the first of
    ``dash_domain``, dashed for the others), retraining events as labelled vertical rules. Rows with ``low``
    and ``high`` draw a band."""
    import altair as alt  # here, not at import: altair loads jsonschema, which the views need not

    x = alt.X("created_at:T", title="time (UTC)", axis=alt.Axis(format="%H:%M:%S", labelAngle=0))
    y = alt.Y("value:Q", title=y_title, scale=alt.Scale(type="log") if log_y else
              alt.Scale(zero=False) if not zero else alt.Undefined)
    colour = alt.Color(f"{color}:N", title=color, legend=alt.Legend(columns=2, symbolLimit=0))
    layers: list[Any] = []
    if {"low", "high"} <= set(frame.columns) and frame["low"].notna().any():
        bands = frame[frame["low"].notna() & frame["high"].notna()]
        layers.append(alt.Chart(bands).mark_area(opacity=0.15).encode(
            x=x, y=alt.Y("low:Q", title=y_title), y2="high:Q", color=colour))
    encoding: dict[str, Any] = {"x": x, "y": y, "color": colour}
    tooltip = ["created_at:T", f"{color}:N", alt.Tooltip("value:Q", format=".4f"), "model_version:N"]
    if dash:
        domain = dash_domain or list(dict.fromkeys(frame[dash]))
        patterns = [[1, 0], [6, 4], [2, 2], [8, 2, 2, 2]]  # solid, dashed, dotted, dash-dot
        encoding["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash, legend=alt.Legend(orient="bottom", labelLimit=0),
                                                scale=alt.Scale(domain=domain, range=patterns[:len(domain)]))
        tooltip.insert(2, f"{dash}:N")
        # Points in their own layer: on a line with points the legend would draw dots, hiding the dash pattern.
        layers.append(alt.Chart(frame).mark_line().encode(**encoding, tooltip=tooltip))
        layers.append(alt.Chart(frame).mark_point(filled=True).encode(x=x, y=y, color=colour, tooltip=tooltip))
    else:
        layers.append(alt.Chart(frame).mark_line(point=True).encode(**encoding, tooltip=tooltip))
    if threshold is not None:
        layers.append(alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(strokeDash=[6, 4], color="gray")
                      .encode(y="threshold:Q"))
    marks = events[events["kind"].isin(RETRAIN_KINDS)] if not events.empty else events
    if not marks.empty:
        marks = marks[["created_at", "kind", "reason", "model_version"]]
        layers.append(alt.Chart(marks).mark_rule(color="orange", strokeWidth=2).encode(
            x="created_at:T", tooltip=["created_at:T", "kind:N", "reason:N", "model_version:N"]))
        layers.append(alt.Chart(marks).mark_text(angle=270, align="left", dx=4, dy=-4, color="orange").encode(
            x="created_at:T", y=alt.value(4), text="kind:N"))
    return alt.layer(*layers).properties(height=280)


REALISED, ESTIMATED = "realised from outcomes", "estimated from scores (CBPE)"


def performance_view(frame: pd.DataFrame) -> pd.DataFrame:
    """AUC per subgroup (``overall`` included) over time, from two sources (column ``source``): realised on
    the outcomes that have arrived, and estimated from each window's scores before its outcomes arrive
    (CBPE, assuming a calibrated model; ``low``/``high``: where the realised AUC should fall if it is)."""
    if frame.empty:
        return frame
    out = frame[frame["metric"].isin(["auc", "estimated_auc"])].rename(columns={"feature": "subgroup"})
    out = out.assign(source=out["metric"].map({"auc": REALISED, "estimated_auc": ESTIMATED}))
    for end in ("low", "high"):
        out[end] = out["details"].map(lambda d, end=end: (d or {}).get(end)).astype(float)
    return out.reset_index(drop=True)


def reconciliation_view(frame: pd.DataFrame) -> dict[str, Any] | None:
    """The latest realised AUC against the estimate from the same labelled rows' scores (None before any)."""
    if frame.empty:
        return None
    rows = frame[frame["metric"] == "estimate_error_auc"]
    if rows.empty:
        return None
    latest = rows.iloc[-1]
    return {**(latest["details"] or {}), "difference": float(latest["value"]), "created_at": latest["created_at"]}


def drift_view(frame: pd.DataFrame) -> pd.DataFrame:
    """Drift p-values per feature over time (alerts when under the corrected threshold)."""
    if frame.empty:
        return frame
    out = frame[frame["metric"] == "p_value"].copy()
    out["value"] = out["value"].clip(lower=1e-12)
    return out


def quality_view(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Missing fraction per feature over time, and the latest window's quality table."""
    if frame.empty:
        return frame, frame
    over_time = frame[frame["metric"] == "missing_fraction"]
    latest_window = frame["window"].iloc[-1]
    latest = frame[frame["window"] == latest_window][["metric", "feature", "value", "threshold", "alert"]]
    return over_time, latest.reset_index(drop=True)


def models_frame(client: LearningMachineClient, mlflow_url: str) -> tuple[pd.DataFrame, str]:
    """The registered versions with metrics and lineage, and links into the MLflow UI."""
    answer = client.models()
    name = answer["model"]
    rows = []
    for v in answer["versions"]:
        tags = v.get("tags") or {}
        rows.append({
            "version": v["version"], "role": "champion" if v.get("champion") else
            ("challenger" if v.get("challenger") else ""),
            "auc": v["metrics"].get("auc"), "brier": v["metrics"].get("brier"), "ece": v["metrics"].get("ece"),
            "created": pd.to_datetime(v.get("created_at"), unit="s", utc=True),
            "dataset": tags.get("lm.dataset"), "dataset digest": (tags.get("lm.dataset_digest") or "")[:12],
            "mode": tags.get("lm.mode"), "previous champion": tags.get("lm.previous_champion"),
            "training run": v.get("run_id"),
            "MLflow version": f"{mlflow_url}/#/models/{name}/versions/{v['version']}",
            "MLflow run": f"{mlflow_url}/#/runs/{v.get('run_id')}" if v.get("run_id") else None,
        })
    return pd.DataFrame(rows), name


def champion_vs_challenger(models: pd.DataFrame) -> pd.DataFrame | None:
    """Side by side metrics of the champion and the challenger; None when there is no challenger."""
    if models.empty or "challenger" not in set(models["role"]):
        return None
    pair = models[models["role"].isin(["champion", "challenger"])].set_index("role")
    return pair[["version", "auc", "brier", "ece", "dataset digest", "created"]].T


def approvals_frame(held: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per version the change-control plan held: the plan, the champion it was judged against, and
    the plan's reason (the clauses outside it)."""
    from learning_machine.registry.names import GATE_CHAMPION_TAG, PLAN_REASON_TAG, PLAN_TAG

    return pd.DataFrame([{"version": str(v.get("version")), "plan": (v.get("tags") or {}).get(PLAN_TAG, ""),
                          "judged against": (v.get("tags") or {}).get(GATE_CHAMPION_TAG, ""),
                          "why it waits": (v.get("tags") or {}).get(PLAN_REASON_TAG, "")} for v in held],
                        columns=["version", "plan", "judged against", "why it waits"])
