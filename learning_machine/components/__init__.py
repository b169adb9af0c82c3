"""KFP components: thin lightweight-Python adapters around the pipeline steps beside them (:mod:`.steps`
for data and models, :mod:`.release` for register, promote and deploy).

Every component runs in the project's platform image (built from the top-level Dockerfile), which holds
the locked dependencies and this package, so nothing is pip-installed at run time
(``install_kfp_package=False``, no ``packages_to_install``). Imports live inside the function bodies
because KFP ships each lightweight component as the source of that one function.
"""

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from learning_machine.registry.config import quiet_mlflow
from learning_machine.settings import Settings, load_settings

ERROR_FILE = "error.json"
"""Written beside a task's executor output when its step fails: ``{"type": ..., "message": ...}`` of the
exception that ended it. The local runner reads it to say why a step failed without parsing the log."""

# The platform image every component runs in on a cluster (kfp.local ignores it and uses this
# interpreter). Built from the top-level Dockerfile; it cannot be built on the development machines.
PLATFORM_IMAGE = "ghcr.io/learning-machine/platform:0.1.0"


def step_settings(**overrides: Any) -> Settings:
    """The settings of one step: the environment (a ConfigMap/Secret on a cluster) plus the step's
    explicit parameters; an empty parameter ("" or None) means "from the environment". Light on purpose:
    every task of a pipeline starts a fresh interpreter that imports this first."""
    quiet_mlflow()
    report_errors()
    return load_settings(**{k: v for k, v in overrides.items() if v not in ("", None)})


def report_errors(argv: list[str] | None = None) -> Path | None:
    """Have an exception that ends this step's process also recorded as :data:`ERROR_FILE` in the task's
    folder: the folder of the executor's output file (``outputs.outputFile`` of the ``--executor_input``
    KFP hands every task). Chains onto ``sys.excepthook``, which still prints the traceback. Returns the
    file it will write (None when this process is not a KFP task)."""
    args = sys.argv if argv is None else argv
    try:
        executor_input = json.loads(args[args.index("--executor_input") + 1])
        target = Path(executor_input["outputs"]["outputFile"]).parent / ERROR_FILE
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    previous = sys.excepthook
    if getattr(previous, "lm_error_file", None) == target:
        return target

    def record(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"type": kind.__name__, "message": str(error).strip()[:4000]}))
        except OSError:
            pass  # the traceback below still says what happened
        previous(kind, error, trace)

    record.lm_error_file = target  # type: ignore[attr-defined]
    sys.excepthook = record
    return target
