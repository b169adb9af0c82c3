"""Model deployers: how a registered version gets served. One small interface (:mod:`.base`), the
built-in backends listed in :data:`learning_machine.backends.DEPLOYERS`, chosen once by ``LM_DEPLOYER``;
an unknown name lists the valid ones.

Backends: ``none`` (serving is not configured: log and do nothing), ``local`` (the embedded MLServer,
through its repository API) and ``seldon`` (a SeldonDeployment through the Kubernetes API)."""

from __future__ import annotations

from learning_machine import backends
from learning_machine.deployers.base import DeployResult, ModelDeployer, NoDeployer
from learning_machine.settings import Settings

__all__ = ["DeployResult", "ModelDeployer", "NoDeployer", "get_deployer"]


def get_deployer(settings: Settings, name: str | None = None) -> ModelDeployer:
    """The deployer the settings (or ``name``) choose."""
    factory = backends.load("deployer", backends.DEPLOYERS, name or settings.deployer)
    deployer: ModelDeployer = factory(settings)
    return deployer
