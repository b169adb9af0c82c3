"""The deployer interface (:class:`ModelDeployer`), its result, and the ``none`` backend."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

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
    """Serves a registered model version. Backends are listed in :data:`learning_machine.backends.DEPLOYERS`."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def deploy(self, model_name: str, version: str) -> DeployResult:
        """Make ``version`` of ``model_name`` the one that serves (idempotent)."""

    def start_shadow(self, model_name: str, champion_version: str, challenger_version: str) -> DeployResult:
        """Serve ``challenger_version`` in the shadow of ``champion_version``: it receives a copy of the live
        traffic and its answers are discarded (idempotent; a shadow already running is replaced).

        By default nothing is deployed: on the embedded stack the monitor scores the challenger itself, and
        that is where the shadow's paired evidence comes from on every backend."""
        return DeployResult(self.name, model_name, challenger_version, changed=False,
                            detail=f"nothing deployed for the shadow of v{champion_version}: the {self.name!r} "
                                   f"deployer has no shadow, the monitor scores v{challenger_version} itself",
                            extra={"shadow": "monitor"})

    def end_shadow(self, model_name: str, champion_version: str) -> DeployResult:
        """Stop serving a shadow beside ``champion_version``; the champion is left as it serves (idempotent)."""
        return DeployResult(self.name, model_name, champion_version, changed=False,
                            detail=f"no shadow deployed by the {self.name!r} deployer: nothing to remove",
                            extra={"shadow": "monitor"})

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
