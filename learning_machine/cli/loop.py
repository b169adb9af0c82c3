"""`lm stream` and `lm monitor`: the data source that feeds the gateway, and the learning loop's monitor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from learning_machine.cli.common import console, out, progress_for, say, settings_of, token_for


def stream(
    ctx: typer.Context,
    rows: Annotated[int, typer.Option(min=1, help="Records to send.")] = 100,
    batch: Annotated[int, typer.Option(min=1, help="Records per request (N at once).")] = 1,
    rate: Annotated[float | None, typer.Option(help="Rows per second (simulation); default: as fast as possible.")]
    = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    scenario: Annotated[str, typer.Option(help="Drift scenario (see `lm data scenarios`).")] = "none",
    drift_start: Annotated[int, typer.Option(min=0, help="Row from which the scenario applies.")] = 0,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 1,
    csv: Annotated[Path | None, typer.Option(help="Send the rows of a CSV (with the dataset's columns) instead.")]
    = None,
    outcome_delay_rows: Annotated[int | None, typer.Option(help="Send each outcome this many rows later.")] = None,
    outcome_delay_s: Annotated[float | None, typer.Option(help="... or this many seconds later.")] = None,
    outcomes: Annotated[bool, typer.Option(help="Send outcomes at all.")] = True,
    gateway: Annotated[str | None, typer.Option(help="Gateway URL (default: the embedded one).")] = None,
    token: Annotated[str | None, typer.Option(help="API token (default: LM_TOKEN, else lm up's tokens).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Send records to the gateway as they would arrive in a clinic, outcomes later. Ctrl-C stops cleanly."""
    import uuid

    import pandas as pd

    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.loop.stream import StreamPlan, generated_records, records_from_frame, run_stream

    settings = settings_of(ctx)
    if outcome_delay_rows is None and outcome_delay_s is None:
        outcome_delay_rows = 50
    plan = StreamPlan(rows=rows, batch_size=batch, rate=rate, duration_s=duration,
                      outcome_delay_rows=outcome_delay_rows, outcome_delay_s=outcome_delay_s, send_outcomes=outcomes)
    if csv is not None:
        from learning_machine.data.sources import spec_for

        spec = spec_for(settings.dataset, settings.dataset_spec)
        source = records_from_frame(pd.read_csv(csv), spec.record_id.name, spec.target.name)
    else:
        # A fresh id prefix per stream, so a second stream adds patients instead of colliding with the first.
        source = generated_records(rows, seed=seed, scenario=scenario, drift_start=drift_start,
                                   id_prefix=f"S{uuid.uuid4().hex[:6]}-")
    url = gateway or settings.gateway_url
    say(f"streaming {rows:,} rows to {url} (scenario {scenario} from row {drift_start}, "
         f"{f'{rate:.1f} rows/s' if rate else 'as fast as possible'}, batches of {batch})")
    with LearningMachineClient(url, token_for(settings, token), timeout_s=settings.request_timeout_s * 3) as client:
        report = run_stream(client, source, plan, progress=say)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    console.print(report.summary())
    if report.stopped_by_error:
        raise typer.Exit(1)
    if report.interrupted:
        raise typer.Exit(130)


def monitor(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option(help="Read the feed once, assess, decide, and exit.")] = False,
    interval: Annotated[float | None, typer.Option(help="Seconds between reads (default LM_MONITOR_INTERVAL_S).")]
    = None,
    gateway: Annotated[str | None, typer.Option(help="Gateway URL (default: the embedded one).")] = None,
    token: Annotated[str | None, typer.Option(help="Monitor API token (default: LM_TOKEN, else lm up's).")] = None,
) -> None:
    """Run the learning loop's monitor: windows of predictions -> drift, quality, performance -> policy ->
    retraining through the pipeline runner. Serves /health and /metrics (Prometheus) on LM_MONITOR_PORT. Stops on Ctrl-C or SIGTERM."""
    import signal
    import threading

    from learning_machine.clients.gateway import LearningMachineClient
    from learning_machine.logs import configure_logging
    from learning_machine.loop.service import LoopService, serve_health

    settings = settings_of(ctx)
    # A failed step is logged with its traceback (to the service's log under `lm up`), in LM_LOG_FORMAT; one
    # httpx line per request every few seconds is noise.
    configure_logging(settings.log_format, "INFO", quiet=("httpx",))
    client = LearningMachineClient(gateway or settings.gateway_url, token_for(settings, token, role="monitor"),
                                   timeout_s=settings.request_timeout_s * 3)
    progress = progress_for(settings, "learning_machine.loop")
    service = LoopService(settings, client, progress=progress)
    if once:
        decision = service.step()
        if service.wait_retraining() is not None:  # a retraining it started runs beside; wait and record it
            service.step()
        console.print(json.dumps({"health": service.health(), "decision": decision.as_dict() if decision else None},
                                 default=str))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    health = serve_health(service, settings.monitor_host, settings.monitor_port)
    progress(f"monitor reading {client.url} every {interval or settings.monitor_interval_s:g} s; "
         f"health at {settings.monitor_health_url}/health, metrics at {settings.monitor_health_url}/metrics")
    try:
        service.run(interval or settings.monitor_interval_s, stop)
    except KeyboardInterrupt:
        pass
    finally:
        health.shutdown()
        client.close()
    progress(f"monitor stopped after {service.steps} step(s), {service.monitor.next_window_id - 1} window(s)")


def register(app: typer.Typer) -> None:
    """Add `lm stream` and `lm monitor` to the `lm` app."""
    app.command()(stream)
    app.command()(monitor)
