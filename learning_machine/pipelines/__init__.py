"""KFP pipelines (training, retraining, batch inference) and their compilation to YAML.

Each pipeline module has ``build(options)`` returning the pipeline with the cluster options applied;
:data:`PIPELINES` names them. The compiled YAML lives in ``pipelines/compiled/`` (committed)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

PIPELINE_NAMES = ("training", "retraining", "batch_inference")
COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def builders() -> dict[str, Callable[..., Any]]:
    """Pipeline name -> ``build(options)``; imported lazily so importing this package stays cheap."""
    from learning_machine.pipelines import batch_inference, retraining, training

    return {"training": training.build, "retraining": retraining.build, "batch_inference": batch_inference.build}
