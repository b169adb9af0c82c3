"""What the local runner learns from kfp.local while a pipeline runs: each task's start, end, status, wall
time and outputs from kfp.local's own task calls, and a failed step's reason from the error record its
process leaves (no text of the log is parsed). Real kfp.local runs of tiny components."""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.

import contextlib
import json
import os
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Metrics, Output

from learning_machine.components import ERROR_FILE
from learning_machine.runners.local import record_tasks
from learning_machine.runners.warm import warm_steps


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def measure(metrics: Output[Metrics]) -> str:
    metrics.log_metric("auc", 0.75)
    print("a line that looks like kfp.local's own: 12:00:00.000 - INFO - Task 'fail' finished with status FAILURE")
    return "measured"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail(message: str) -> str:
    from learning_machine.components import report_errors

    report_errors()  # what every platform component does first (through step_settings)
    raise ValueError(message)


@dsl.pipeline(name="record-test")
def measure_then_fail() -> str:
    first = measure()
    return fail(message=f"bad input after {first.outputs['Output']}").output


@pytest.mark.parametrize("warm", [True, False], ids=["warm-interpreter", "fresh-interpreter"])
def test_steps_states_outputs_and_the_failed_steps_reason_come_from_kfp_local(tmp_path: Path, warm: bool):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    said: list[str] = []
    with (warm_steps(tmp_path / "warm", dict(os.environ)) if warm else contextlib.nullcontext()), \
            record_tasks(said.append) as tasks, pytest.raises(RuntimeError, match="FAILURE"):
        measure_then_fail()
    assert tasks.steps == {"measure": "SUCCEEDED", "fail": "FAILED"}
    assert tasks.errors == {"fail": "ValueError: bad input after measured"}
    assert said == ["step measure ...", "step measure: success", "step fail ...",
                    "step fail: failure (ValueError: bad input after measured)"]
    assert set(tasks.seconds) == {"measure", "fail"} and all(s > 0 for s in tasks.seconds.values())
    published = tasks.outputs["measure"]
    assert published["Output"] == "measured"
    assert published["metrics"]["type"] == "system.Metrics" and published["metrics"]["metadata"] == {"auc": 0.75}
    run = next((tmp_path / "root").iterdir())
    assert json.loads((run / "fail" / ERROR_FILE).read_text())["type"] == "ValueError"


def test_outside_the_block_nothing_is_recorded(tmp_path: Path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with record_tasks() as before:
        pass
    assert measure().outputs["Output"] == "measured"
    assert before.steps == {}
