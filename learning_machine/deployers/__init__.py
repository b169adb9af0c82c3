"""Model deployers: how a registered version gets served. One small interface, a registry of the
built-in backends, chosen once by ``LM_DEPLOYER``; an unknown name lists the valid ones.

Backends: ``none`` (serving is not configured: log and do nothing), ``local`` (the embedded MLServer,
through its repository API) and ``seldon`` (a SeldonDeployment through the Kubernetes API)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from learning_machine.errors import UnknownNameError
from learning_machine.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DeployResult:
    """What a deployment did."""

    backend: str
    model_name: str
    version: str
    changed: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_name": self.model_name, "version": self.version,
                "changed": self.changed, "detail": self.detail, **self.extra}


class ModelDeployer(ABC):
    """Serves a registered model version. Subclasses register in :data:`DEPLOYERS`."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def deploy(self, model_name: str, version: str) -> DeployResult:
        """Make ``version`` of ``model_name`` the one that serves (idempotent)."""

    def describe(self) -> dict[str, Any]:
        """Where the backend deploys to, for status output."""
        return {"backend": self.name}


class NoDeployer(ModelDeployer):
    """No serving configured yet: deployment is a logged no-op."""

    name = "none"

    def deploy(self, model_name: str, version: str) -> DeployResult:
        message = (f"no model deployer configured (LM_DEPLOYER=none): {model_name} v{version} is registered "
                   "but not deployed; set LM_DEPLOYER=local or seldon to serve it")
        log.warning(message)
        return DeployResult(self.name, model_name, version, changed=False, detail=message)


DEPLOYERS: dict[str, Callable[[Settings], ModelDeployer]] = {"none": NoDeployer}


def register_deployer(name: str, factory: Callable[[Settings], ModelDeployer]) -> None:
    """Add a backend to the registry (the built-in ones register on import of this package)."""
    DEPLOYERS[name] = factory


def get_deployer(settings: Settings, name: str | None = None) -> ModelDeployer:
    """The deployer the settings (or ``name``) choose."""
    chosen = name or settings.deployer
    _load_builtin()
    try:
        factory = DEPLOYERS[chosen]
    except KeyError:
        raise UnknownNameError("deployer", chosen, list(DEPLOYERS)) from None
    return factory(settings)


def _load_builtin() -> None:
    """Import the built-in backends (each registers itself); optional ones may be absent."""
    import importlib

    for module in ("learning_machine.deployers.local", "learning_machine.deployers.seldon"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
