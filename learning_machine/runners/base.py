"""The pipeline runner interface, its result, and pipelines by name."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learning_machine import backends
from learning_machine.errors import PipelineError, UnknownNameError
from learning_machine.settings import Settings

Progress = Callable[[str], None]

# Parameters every pipeline takes whose defaults come from the settings of the process that runs it.
SETTINGS_PARAMS: dict[str, Callable[[Settings], Any]] = {
    "tracking_uri": lambda s: s.tracking_uri,
    "experiment_name": lambda s: s.experiment_name,
    "model_name": lambda s: s.model_name,
    "test_fraction": lambda s: s.test_fraction,
    "model_kind": lambda s: s.model_kind,
    "gate_metric": lambda s: s.gate_metric,
    "gate_margin": lambda s: s.gate_margin,
    "max_missing_fraction": lambda s: s.max_missing_fraction,
    "max_invalid_fraction": lambda s: s.max_invalid_fraction,
    "deployer": lambda s: s.deployer,
}


@dataclass
class PipelineRun:
    """What one pipeline run did and where to look: its MLflow parent run and its outputs."""

    pipeline: str
    runner: str
    run_key: str
    state: str
    parameters: dict[str, Any]
    parent_run_id: str | None = None
    mlflow_url: str | None = None
    outputs_dir: str | None = None
    log_path: str | None = None
    seconds: float = 0.0
    error: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step, where the runner can tell (kfp.local: task start to task end)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    def raise_for_state(self) -> PipelineRun:
        """Raise :class:`PipelineError` (with the failing step's message) unless the run succeeded."""
        if self.state in ("FAILED", "ERROR"):
            where = f"; log: {self.log_path}" if self.log_path else ""
            raise PipelineError(f"pipeline {self.pipeline!r} failed: {self.error or 'see the log'}{where}",
                                detail=self.as_dict())
        return self

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


class PipelineRunner(ABC):
    """Runs a named pipeline with parameters. Backends are listed in :data:`learning_machine.backends.PIPELINE_RUNNERS`."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def prepare(self) -> None:  # noqa: B027 - optional: most runners have nothing to prepare
        """Get ready for a run that will come soon, without starting one (nothing by default)."""

    @abstractmethod
    def run(self, pipeline: str, params: dict[str, Any] | None = None, *,
            progress: Progress | None = None) -> PipelineRun:
        """Run ``pipeline`` (``training``, ``retraining``, ``batch_inference``) with ``params``; string
        values (from a command line) are converted to the parameter's type."""

    def parameters(self, pipeline: str, params: dict[str, Any] | None = None, *,
                   from_settings: bool = True) -> dict[str, Any]:
        """The run's arguments: defaults from the settings, then ``params``, checked and typed."""
        declared = pipeline_inputs(pipeline)
        merged: dict[str, Any] = {}
        if from_settings:
            merged = {k: fn(self.settings) for k, fn in SETTINGS_PARAMS.items() if k in declared}
        for key, value in (params or {}).items():
            if key not in declared:
                raise UnknownNameError(f"{pipeline} parameter", key, list(declared))
            merged[key] = convert(key, value, declared[key])
        return merged


def get_runner(settings: Settings, name: str | None = None) -> PipelineRunner:
    """The runner the settings (``LM_PIPELINE_RUNNER``) or ``name`` choose, from
    :data:`learning_machine.backends.PIPELINE_RUNNERS`."""
    factory = backends.load("pipeline runner", backends.PIPELINE_RUNNERS, name or settings.pipeline_runner)
    runner: PipelineRunner = factory(settings)
    return runner


# -- pipelines by name -----------------------------------------------------------------------------
def pipeline_names() -> tuple[str, ...]:
    from learning_machine.pipelines import PIPELINE_NAMES

    return PIPELINE_NAMES


def build_pipeline(name: str, options: Any = None) -> Any:
    """The pipeline called ``name`` (a KFP graph component) with cluster ``options`` applied."""
    from learning_machine.pipelines import builders
    from learning_machine.pipelines.cluster import DEFAULT_OPTIONS

    found = builders()
    key = name.replace("-", "_")
    if key not in found:
        raise UnknownNameError("pipeline", name, list(found))
    return found[key](options or DEFAULT_OPTIONS)


def pipeline_inputs(name: str) -> dict[str, str]:
    """Parameter name -> KFP type (``String``, ``Integer``, ``Float``, ``Boolean``...) of a pipeline."""
    spec = build_pipeline(name).component_spec
    return {key: str(value.type) for key, value in (spec.inputs or {}).items()}


def convert(key: str, value: Any, kfp_type: str) -> Any:
    """A command-line string (or a value) as the parameter's type; a clear error when it does not parse."""
    if not isinstance(value, str):
        return value
    try:
        if kfp_type == "Integer":
            return int(value)
        if kfp_type == "Float":
            return float(value)
        if kfp_type == "Boolean":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kfp_type in ("Dict", "List", "Struct"):
            return json.loads(value)
    except (ValueError, json.JSONDecodeError) as exc:
        raise PipelineError(f"parameter {key!r} must be {kfp_type}, got {value!r}") from exc
    return value


def compile_pipeline(name: str, path: Path, options: Any = None) -> Path:
    """Compile one pipeline to YAML at ``path``."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(name, options), str(path))
    return path


def compile_all(out_dir: Path | None = None, options: Any = None) -> list[Path]:
    """Compile every pipeline into ``out_dir`` (default ``pipelines/compiled``) as ``<name>.yaml``."""
    from learning_machine.pipelines import COMPILED_DIR

    folder = out_dir or COMPILED_DIR
    return [compile_pipeline(name, folder / f"{name}.yaml", options) for name in pipeline_names()]
