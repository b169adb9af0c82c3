"""The Learning Machine dashboard (Streamlit): `streamlit run dashboard/app.py` (what `lm up` runs).

Three views over the gateway's REST API: patients (the incoming records and the data source),
clinician (one patient's risk, explanation and the model's facts) and data scientist (performance,
drift, quality, retraining and model versions). The logic is in :mod:`dashboard.views`; this file only
lays it out and turns every error into a message."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from learning_machine.clients.gateway import GatewayError, LearningMachineClient
from learning_machine.dashboard import views  # the installed name of this folder (a symlink)

PAGES = {"patients": "Patients", "clinician": "Clinician", "data-scientist": "Data scientist"}


@st.cache_resource(show_spinner=False)
def _client(url: str, token: str) -> LearningMachineClient:
    return LearningMachineClient(url, token or None, timeout_s=60)


@st.cache_data(ttl=30, show_spinner=False)
def _model_card(url: str, token: str) -> dict[str, Any]:
    """The serving version's facts change only with a promotion: read them at most every 30 s."""
    return _client(url, token).model_card()


@st.cache_data(ttl=30, show_spinner=False)
def _label(url: str, token: str, version: str, format: str = "json") -> Any:
    """A version's model-facts label (a promotion or a rollback changes only its rollout lines: 30 s is fresh enough)."""
    return _client(url, token).label(version, format)


def _serving_label(conn: views.Connection) -> dict[str, Any] | None:
    """The serving version's label; a version registered before change records were kept has none (said, not an
    error: the rest of the page works)."""
    try:
        return dict(_label(conn.gateway_url, conn.token, "champion"))
    except GatewayError as exc:
        if exc.status == 404:
            st.info(f"No model-facts label for the version that answers now: {exc.message}.")
            return None
        st.error(f"Could not read the model facts label. {views.explain_error(exc)}")
    except Exception as exc:  # noqa: BLE001 - every error is shown, not raised
        st.error(f"Could not read the model facts label. {views.explain_error(exc)}")
    return None


def show_label(facts: dict[str, Any]) -> None:
    """The model-facts label in the layout of Sendak et al. (2020): one bordered page, its sections in order."""
    view = views.label_view(facts)

    def lines(title: str, rows: list[tuple[str, str]]) -> None:
        st.markdown(f"**{title}**")
        st.markdown("\n".join(f"- *{views.md_escape(k)}*: {views.md_escape(v)}" for k, v in rows) or "none recorded")

    with st.container(border=True):
        st.markdown(f"#### Model facts: {views.md_escape(view['title'])}")
        left, right = st.columns(2)
        with left:
            lines("Summary", view["summary"])
            lines("Mechanism of risk score calculation", view["mechanism"])
            lines("Uses and directions", view["uses"])
        with right:
            st.markdown("**Validation and performance** (held-out test rows)")
            st.dataframe(view["overall"], hide_index=True, width="stretch")
            if not view["versus"].empty:
                st.caption(f"Against the champion it was compared with (v{view['versus_champion']}), on the same rows:")
                st.dataframe(view["versus"], hide_index=True, width="stretch")
            else:
                st.caption("The first version: there was no champion to compare it with.")
            st.markdown("\n".join(f"- *{views.md_escape(k)}*: {views.md_escape(v)}" for k, v in view["validation"]))
            st.markdown("**Warnings**")
            st.markdown("\n".join(f"- {views.md_escape(w)}" for w in view["warnings"]))
        st.markdown("**Subgroup performance**")
        st.dataframe(view["subgroups"], hide_index=True, width="stretch")
        lines("Other information", view["other"])


def _guard(what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; on any error show what failed in words and return None (never raise into Streamlit)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every error is shown, not raised
        st.error(f"Could not {what}. {views.explain_error(exc)}")
        return None


def sidebar() -> tuple[LearningMachineClient, views.Connection, dict[str, Any] | None, str]:
    conn = views.default_connection()
    st.sidebar.title("Learning Machine")
    default_page = st.query_params.get("page", "patients")
    keys = list(PAGES)
    page = st.sidebar.radio("View", keys, index=keys.index(default_page) if default_page in keys else 0,
                            format_func=PAGES.__getitem__, key="page")
    url = st.sidebar.text_input("Gateway URL", conn.gateway_url, key="gateway_url")
    link_token = st.query_params.get("token")
    if link_token:  # a sign-in link (`lm dashboard-link`): keep the token in the session, drop it from the URL
        st.session_state["token"] = link_token
        del st.query_params["token"]
    token = st.sidebar.text_input("API token", conn.token, type="password", key="token",
                                  help="Your gateway token (`lm tokens create --role ROLE`; on the machine that "
                                       "ran `lm up`, `lm dashboard-link` prints a sign-in link).")
    client = _client(url.strip(), token.strip())
    me = None
    if not token.strip():
        st.sidebar.warning("No token: paste one above (`lm tokens create --role clinician`).")
    else:
        try:
            me = views.whoami(client)
            st.sidebar.success(f"Signed in as **{me['role']}** ({me['name']})")
        except Exception as exc:  # noqa: BLE001
            st.sidebar.error(views.explain_error(exc))
    st.sidebar.caption(f"MLflow UI: {conn.mlflow_url}")
    return client, views.Connection(url.strip(), token.strip(), conn.mlflow_url, conn.token_source), me, page


# -- patients --------------------------------------------------------------------------------------
def patients_page(client: LearningMachineClient, conn: views.Connection, me: dict[str, Any] | None) -> None:
    st.header("Patients")
    st.caption("Records as they arrive at the gateway, the model's prediction, and the outcome once it is known.")
    role = (me or {}).get("role")

    with st.expander("Send records (the data source)", expanded=True):
        c1, c2, c3 = st.columns([1, 1, 2])
        if c1.button("Send one patient", key="send_one"):
            answers = _guard("send a record", lambda: views.send_records(client, 1))
            if answers:
                a = answers[0]
                st.success(f"{a['record_id']}: risk {a['probability']:.1%} (model v{a['model_version']})")
        n = c2.number_input("N", min_value=1, max_value=5000, value=20, step=10, key="send_n_rows")
        if c2.button(f"Send {int(n)} patients", key="send_n"):
            with st.spinner(f"sending {int(n)} records…"):
                answers = _guard("send records", lambda: views.send_records(client, int(n)))
            if answers:
                st.success(f"{len(answers)} records predicted (model v{answers[-1]['model_version']}).")
        sim: views.Simulation | None = st.session_state.get("simulation")
        with c3:
            from learning_machine.data.synthetic import SCENARIOS

            scenario = st.selectbox("Scenario", SCENARIOS, key="sim_scenario",
                                    help="`lm data scenarios` says what each shifts.")
            rate = st.slider("Rate (rows/s)", 1, 100, 10, key="sim_rate")
            rows = st.number_input("Rows", 10, 100_000, 1000, step=100, key="sim_rows")
            start, stop = st.columns(2)
            if start.button("Start simulation", key="sim_start", disabled=bool(sim and sim.running)):
                sim = views.Simulation(scenario, float(rate), int(rows), send_outcomes=role is not None)
                sim.start(conn.gateway_url, conn.token)
                st.session_state["simulation"] = sim
            if stop.button("Stop simulation", key="sim_stop", disabled=not (sim and sim.running)):
                assert sim is not None
                sim.stop()
            if sim is not None:
                st.info(f"Simulation {sim.status()}")
                if not sim.send_outcomes:
                    st.caption("Outcomes are not sent with this token (they need a data-scientist token).")

    search = st.text_input("Search record ids", key="patient_search", placeholder="e.g. sim- or dash-")
    size = 100
    got = _guard("read the patients", lambda: views.patients_table(client, search, limit=size,
                                                                   offset=st.session_state.get("patients_offset", 0)))
    if got is None:
        return
    frame, total = got
    if total == 0:
        st.info("No patients yet. Send one with the buttons above, or run `lm stream`." if not search
                else f"No record id contains {search!r}.")
        return
    offset = st.session_state.get("patients_offset", 0)
    st.write(f"{total:,} records{' matching' if search else ''}; showing {offset + 1:,}–{offset + len(frame):,}, "
             "newest first.")
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        "risk": st.column_config.ProgressColumn("risk", format="%.2f", min_value=0.0, max_value=1.0),
        "arrived": st.column_config.DatetimeColumn("arrived", format="YYYY-MM-DD HH:mm:ss")})
    prev, nxt = st.columns(2)
    if prev.button("Newer", disabled=offset == 0, key="patients_prev"):
        st.session_state["patients_offset"] = max(0, offset - size)
        st.rerun()
    if nxt.button("Older", disabled=offset + size >= total, key="patients_next"):
        st.session_state["patients_offset"] = offset + size
        st.rerun()


# -- clinician -------------------------------------------------------------------------------------
def clinician_page(client: LearningMachineClient, conn: views.Connection, me: dict[str, Any] | None) -> None:
    st.header("Clinician")
    facts = _serving_label(conn)
    if facts:
        with st.expander(f"Model facts: {facts['summary']['model']}, the version that answers now", expanded=False):
            show_label(facts)
    search = st.text_input("Find a patient (part of the record id)", key="clin_search")
    got = _guard("read the patients", lambda: views.patients_table(client, search, limit=200))
    if got is None:
        return
    frame, total = got
    if total == 0:
        st.info("No patients yet: records appear here once they have been sent for a prediction "
                "(Patients view, or `lm stream`).")
        return
    ids = list(frame["record_id"])
    record_id = st.selectbox("Patient", ids, key="clin_patient", help=f"The {len(ids)} most recent of {total:,}.")
    view = _guard("read this patient", lambda: views.patient_view(client, record_id))
    if view is None:
        return
    card = _guard("read the model facts", lambda: _model_card(conn.gateway_url, conn.token))
    prediction = view["prediction"]
    if prediction is None:
        st.warning("This record has no prediction yet.")
        return
    p = float(prediction["probability"])
    band = views.risk_band(card, p)
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted risk", f"{p:.0%}", help="Probability of the outcome within the model's horizon.")
    if band:
        c2.metric("Observed in similar patients", f"{band['observed']:.0%}",
                  help=f"Among {band['n']} held-out test patients with a predicted risk near {band['band_mean']:.0%}, "
                       f"{band['observed']:.0%} had the outcome (95% interval {band['low']:.0%}–{band['high']:.0%}).")
        c2.caption(f"95% interval {band['low']:.0%}–{band['high']:.0%} (n = {band['n']})")
    else:
        c2.metric("Observed in similar patients", "n/a")
    c3.metric("Model version", f"v{prediction['model_version']}")
    outcome = view["outcome"]
    st.caption(f"Record {record_id}, arrived {view['received_at']}; outcome: "
               + ("not known yet" if outcome is None else ("yes (1)" if outcome == 1 else "no (0)")))

    left, right = st.columns(2)
    with left:
        st.subheader("Why: what drives this risk")
        exact = _guard("explain the prediction", lambda: views.explanation(client, view, "exact"))
        if exact:
            contrib = views.contributions_frame(exact)
            st.altair_chart(views.contributions_chart(contrib), width="stretch")
            st.caption("Each bar is a feature's share of the model's log-odds (exact TreeSHAP); red raises the risk.")
    with right:
        st.subheader("A rule that holds the prediction")
        if "anchors" in view["explanations"] or st.button("Find the rule (a few seconds)", key="clin_anchor"):
            with st.spinner("searching for an anchor rule…"):
                anchors = _guard("find an anchor rule", lambda: views.explanation(client, view, "anchors"))
            if anchors:
                st.write(views.anchor_sentence(anchors))
                st.caption(f"Precision {anchors.get('precision', 0):.0%} · coverage {anchors.get('coverage', 0):.0%}")

    st.subheader("The patient's values against the reference population")
    if card:
        st.dataframe(views.values_against_reference(card, view["features"]), hide_index=True,
                     width="stretch")
    else:
        st.json(view["features"])

    st.subheader("Enter the real outcome")
    role = (me or {}).get("role")
    may = role is not None  # clinicians know the real outcome: every role may record it
    if not may:
        st.caption("Recording an outcome needs a valid token.")
    choice = st.radio("Outcome", [1, 0], format_func=lambda v: "yes: the outcome happened (1)" if v else "no (0)",
                      horizontal=True, key="clin_outcome", disabled=not may)
    overwrite = st.checkbox("Replace a different stored outcome", key="clin_overwrite", disabled=not may)
    if st.button("Record outcome", key="clin_record", disabled=not may):
        answer = _guard("record the outcome", lambda: client.outcome(record_id, int(choice), overwrite=overwrite))
        if answer:
            st.success(f"Outcome {answer['outcome']} for {record_id}: {answer['status']}.")


# -- data scientist ----------------------------------------------------------------------------------
def data_scientist_page(client: LearningMachineClient, conn: views.Connection, me: dict[str, Any] | None) -> None:
    st.header("Data scientist")
    role = (me or {}).get("role")
    if role not in (views.DATA_SCIENTIST, views.ADMIN):
        st.warning("This view needs a data-scientist or admin token" + (f"; yours is {role}." if role else ".")
                   + " Paste one in the sidebar.")
        return
    events = _guard("read the events", lambda: views.events_frame(client))
    events = events if events is not None else pd.DataFrame(columns=["created_at", "kind", "reason"])

    st.subheader("Performance over time: realised and estimated")
    results = _guard("read the performance results", lambda: views.monitoring_frame(client, "performance"))
    perf = views.performance_view(results) if results is not None else None
    if perf is not None:
        if perf.empty or not (perf["source"] == views.REALISED).any():
            st.info("No outcomes yet: realised performance appears once outcomes have arrived for a full monitoring "
                    "window (the monitor needs both classes). Outcomes come from the clinician view or `lm stream`.")
        if not perf.empty:
            groups = sorted(perf["subgroup"].unique())
            chosen = st.multiselect("Subgroups", groups, default=[g for g in groups if g == "overall"] or groups[:1],
                                    key="ds_subgroups")
            st.altair_chart(views.timeline_chart(perf[perf["subgroup"].isin(chosen)], events, y_title="AUC",
                                                 color="subgroup", zero=False, dash="source",
                                                 dash_domain=[views.REALISED, views.ESTIMATED]), width="stretch")
            st.caption(f"Solid: AUC **{views.REALISED}** (recent predictions whose outcome has arrived). Dashed: AUC "
                       f"**{views.ESTIMATED}** of each window before its outcomes arrive, assuming the model is "
                       "calibrated; the band is where the realised AUC should fall if it is. The estimate cannot see "
                       "concept drift: a realised AUC below the band is the sign.")
            check = views.reconciliation_view(results)
            if check is not None and None not in (check.get(k) for k in ("realised", "estimated", "low", "high")):
                verdict = ("within the estimate's interval: the scores look calibrated on these patients"
                           if check.get("within") else
                           "outside the estimate's interval: the scores are not calibrated on these patients ("
                           + ("overconfident" if check["realised"] < check["low"] else "underconfident")
                           + ": concept drift, a population the model extrapolates to, or a model never well "
                           "calibrated), so do not trust the estimate for the windows still waiting for outcomes")
                st.caption(f"Latest reconciliation on {check.get('n')} labelled predictions: realised AUC "
                           f"{check['realised']:.3f}, estimated from the same scores {check['estimated']:.3f} "
                           f"(95% interval {check['low']:.3f}–{check['high']:.3f}), {verdict}.")

    st.subheader("Drift per feature over time")
    drift = _guard("read the drift results", lambda: views.drift_view(views.monitoring_frame(client, "drift")))
    if drift is not None:
        if drift.empty:
            st.info("No drift results yet: the monitor assesses each window of new predictions (`lm up` runs it).")
        else:
            threshold = float(drift["threshold"].dropna().iloc[-1]) if drift["threshold"].notna().any() else None
            st.altair_chart(views.timeline_chart(drift, events, y_title="p-value (log scale; below the line: drift)",
                                                 threshold=threshold, log_y=True), width="stretch")

    st.subheader("Data quality")
    quality = _guard("read the data-quality results", lambda: views.quality_view(views.monitoring_frame(client, "quality")))
    if quality is not None:
        over_time, latest = quality
        if over_time.empty:
            st.info("No data-quality results yet.")
        else:
            st.altair_chart(views.timeline_chart(over_time, events, y_title="missing fraction"),
                            width="stretch")
            st.caption("Latest window")
            st.dataframe(latest, hide_index=True, width="stretch")

    st.subheader("Retraining and lifecycle events")
    if events.empty:
        st.info("No events yet: retraining, promotions and rollbacks are listed here as they happen.")
    else:
        st.dataframe(events[["created_at", "kind", "model_version", "reason"]], hide_index=True,
                     width="stretch")

    st.subheader("The gate's evidence")
    gate = views.gate_frame(events)
    if gate.empty:
        st.info("No gate decisions yet: each retraining's challenger is compared with the champion on the same "
                "held-out rows (then, if not yet proven, on live records in the shadow), with 95 % intervals.")
    else:
        st.caption("Candidate minus champion on the same records: AUC (DeLong), log-loss and Brier (paired), "
                   "with intervals; each clause of the rule with its verdict.")
        st.dataframe(gate, hide_index=True, width="stretch")

    st.subheader("Model versions")
    got = _guard("list the model versions", lambda: views.models_frame(client, conn.mlflow_url))
    if got is None:
        return
    models, name = got
    if models.empty:
        st.info(f"No model yet: {name!r} has no registered version. Train one with `lm train`.")
        return
    st.dataframe(models, hide_index=True, width="stretch", column_config={
        "MLflow version": st.column_config.LinkColumn("MLflow version", display_text="open"),
        "MLflow run": st.column_config.LinkColumn("MLflow run", display_text="open")})
    pair = views.champion_vs_challenger(models)
    st.markdown("**Champion versus challenger**")
    if pair is None:
        st.caption("No challenger at the moment: the last candidate was promoted or refused.")
    else:
        st.dataframe(pair.astype(str), width="stretch")

    _approvals(client, role)

    label_section(client, conn, models)

    st.subheader("Actions")
    if role != views.ADMIN:
        st.caption("Retraining, promotion and rollback need an admin token.")
        return
    a, b, c = st.columns(3)
    reason = a.text_input("Reason", "manual (dashboard)", key="admin_reason")
    if a.button("Request retraining", key="admin_retrain"):
        event = _guard("request a retraining", lambda: client.request_retraining(reason))
        if event:
            st.success(f"Retraining requested (event {event['id']}); the monitor's policy decides when it runs.")
    version = b.selectbox("Version", list(models["version"]), key="admin_version")
    if b.button("Promote to champion", key="admin_promote"):
        event = _guard("promote", lambda: client.promote(str(version), reason))
        if event:
            st.success(f"v{event['detail']['to']} is the champion ({event['detail']['deployed'].get('detail', '')}).")
    if c.button("Roll back the champion", key="admin_rollback"):
        event = _guard("roll back", lambda: client.rollback())
        if event:
            st.success(f"Rolled back from v{event['detail']['from']} to v{event['detail']['to']}.")


def _approvals(client: LearningMachineClient, role: str | None) -> None:
    """Versions the change-control plan held (better than the champion, outside the plan): why, and for an
    admin, approve or reject with a reason (recorded with the admin's name)."""
    st.subheader("Awaiting approval")
    held = _guard("list the versions awaiting approval", client.awaiting_approval)
    if held is None:
        return
    if not held:
        st.caption("No version is awaiting approval: every change so far was inside the change-control plan "
                    "or was not shown better than the champion.")
        return
    st.dataframe(views.approvals_frame(held), hide_index=True, width="stretch")
    if role != views.ADMIN:
        st.caption("An admin approves or rejects these versions.")
        return
    a, b = st.columns([1, 2])
    version = a.selectbox("Held version", [str(v["version"]) for v in held], key="approval_version")
    why = b.text_input("Why (recorded with your name)", key="approval_reason")
    approve, reject = st.columns(2)
    for column, decision, label in ((approve, "approve", "Approve and serve"), (reject, "reject", "Reject")):
        if column.button(label, key=f"approval_{decision}"):
            if len(why.strip()) < 3:
                st.error("Say why: the reason is recorded with the decision.")
                continue
            result = _guard(f"{decision} v{version}", partial(client.decide_approval, version, decision, why))
            if result:
                st.success(f"v{version} {result['decision']}"
                           + ("; it is the champion now" if result["decision"] == "approved" else "") + ".")


def label_section(client: LearningMachineClient, conn: views.Connection, models: pd.DataFrame) -> None:
    """A version's model-facts label, what changed from the version before, its exports and its change record."""
    st.subheader("Model facts label and change record")
    versions = [str(v) for v in models["version"]]
    champion = [str(v) for v in models.loc[models["role"] == "champion", "version"]]
    wanted = st.query_params.get("version") or (champion[0] if champion else versions[0])
    version = st.selectbox("Version", versions, index=versions.index(wanted) if wanted in versions else 0,
                           key="label_version")
    facts = _guard("read the label", lambda: _label(conn.gateway_url, conn.token, version))
    if facts is None:
        return
    show_label(facts)
    a, b = st.columns(2)
    markdown = _guard("export the label", lambda: _label(conn.gateway_url, conn.token, version, "markdown"))
    page = _guard("export the label", lambda: _label(conn.gateway_url, conn.token, version, "html"))
    if markdown is not None:
        a.download_button("Download the label (Markdown)", markdown, file_name=f"model-facts-v{version}.md",
                          mime="text/markdown", key="label_md")
    if page is not None:
        b.download_button("Download the label (HTML)", page, file_name=f"model-facts-v{version}.html",
                          mime="text/html", key="label_html")
    if version == min(versions, key=int):
        st.caption("The first version: no earlier label to compare with.")
    else:
        changes = _guard("compare the label with the previous version", lambda: client.label_diff(version))
        if changes is not None:
            diff = views.label_diff_view(changes)
            st.markdown(f"**What changed from v{diff['from']} to v{diff['to']}**")
            c, d = st.columns(2)
            c.dataframe(diff["overall"], hide_index=True, width="stretch")
            d.dataframe(diff["subgroups"], hide_index=True, width="stretch")
            st.dataframe(diff["changed"], hide_index=True, width="stretch")
            for w in diff["warnings"]["added"]:
                st.markdown(f"- new warning: {views.md_escape(w)}")
            for w in diff["warnings"]["removed"]:
                st.markdown(f"- warning gone: {views.md_escape(w)}")
    found = _guard("read the change record", lambda: client.change_record(version))
    if found is not None:
        st.caption(f"Change record {found['location']} · sha256 {found['sha256'][:16]}… verified"
                   + (f" · not recorded: {', '.join(found['missing'])}" if found["missing"] else " · complete"))
        with st.expander("The change record (immutable) and its rollout", expanded=False):
            st.json({"record": found["record"], "rollout": found["rollout"]}, expanded=3)


@st.cache_resource  # once per process
def _logging() -> None:
    """With LM_LOG_FORMAT=json, Streamlit's log lines (its loggers have handlers of their own and do not
    propagate) are JSON objects too; the text format keeps Streamlit's own."""
    from learning_machine.logs import reformat
    from learning_machine.settings import load_settings

    log_format = load_settings().log_format
    if log_format == "json":
        reformat("streamlit", log_format)


def main() -> None:
    _logging()
    st.set_page_config(page_title="Learning Machine", layout="wide")
    client, conn, me, page = sidebar()
    if not conn.token:  # nothing to show a visitor who has not signed in, and no request to make
        st.title("Learning Machine")
        st.info("Sign in with your API token in the sidebar. On the machine that ran `lm up`, "
                "`lm dashboard-link` prints a sign-in link; an admin creates tokens with "
                "`lm tokens create --role clinician|data-scientist|admin`.")
        return
    {"patients": patients_page, "clinician": clinician_page, "data-scientist": data_scientist_page}[page](
        client, conn, me)


main()
