"""KFP components: thin lightweight-Python adapters around the pipeline steps beside them (:mod:`.steps`
for data and models, :mod:`.release` for register, promote and deploy).

Every component runs in the project's platform image (built from the top-level Dockerfile), which holds
the locked dependencies and this package, so nothing is pip-installed at run time
(``install_kfp_package=False``, no ``packages_to_install``). Imports live inside the function bodies
because KFP ships each lightweight component as the source of that one function.
"""

from typing import Any

from learning_machine.registry.config import quiet_mlflow
from learning_machine.settings import Settings, load_settings

# The platform image every component runs in on a cluster (kfp.local ignores it and uses this
# interpreter). Built from the top-level Dockerfile; it cannot be built on the development machines.
PLATFORM_IMAGE = "ghcr.io/learning-machine/platform:0.1.0"


def step_settings(**overrides: Any) -> Settings:
    """The settings of one step: the environment (a ConfigMap/Secret on a cluster) plus the step's
    explicit parameters; an empty parameter ("" or None) means "from the environment". Light on purpose:
    every task of a pipeline starts a fresh interpreter that imports this first."""
    quiet_mlflow()
    return load_settings(**{k: v for k, v in overrides.items() if v not in ("", None)})
