"""The built-in backends of every swappable concern, by name: one explicit table each, holding import
paths that are loaded only when a backend is chosen (nothing registers itself as a side effect of an
import). Settings validate their names against these tables when they load, so a misspelt
``LM_DEPLOYER`` fails at start with the list of valid names, not at the first promotion."""

from __future__ import annotations

import importlib
from typing import Any

from learning_machine.errors import UnknownNameError

# How a new champion is served (learning_machine.deployers).
DEPLOYERS: dict[str, str] = {
    "none": "learning_machine.deployers.base:NoDeployer",
    "local": "learning_machine.deployers.local:LocalDeployer",
    "seldon": "learning_machine.deployers.seldon:SeldonDeployer",
}
# Where pipelines run (learning_machine.runners).
PIPELINE_RUNNERS: dict[str, str] = {
    "local": "learning_machine.runners.local:LocalRunner",
    "kubeflow": "learning_machine.runners.kubeflow:KubeflowRunner",
}
# Model kinds (learning_machine.model.training) and drift detectors (learning_machine.model.drift_detector): their
# objects are cheap and live in those modules; the names are here so settings can check them.
MODEL_KINDS: tuple[str, ...] = ("xgboost", "logistic-regression")
DRIFT_DETECTORS: tuple[str, ...] = ("TabularDrift", "ChiSquareDrift", "KSDrift")


def check_name(what: str, name: str, valid: dict[str, str] | tuple[str, ...]) -> str:
    """``name`` if ``valid`` has it, else an :class:`UnknownNameError` that lists the valid names."""
    if name not in valid:
        raise UnknownNameError(what, name, list(valid))
    return name


def load(what: str, table: dict[str, str], name: str) -> Any:
    """The object the table names for ``name``, imported now."""
    module, _, attr = table[check_name(what, name, table)].partition(":")
    return getattr(importlib.import_module(module), attr)
