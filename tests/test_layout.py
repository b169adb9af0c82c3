"""The package's layout at run time (DESIGN.md "Layout"): importing any module of learning_machine pulls in no
dev-only package, and `lm` does not import the benchmark harness. Imports are checked in a fresh interpreter;
the static side (layers, forbidden imports) is import-linter's (`make lint`, contracts in pyproject.toml)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "learning_machine"
# Dev-only packages, or packages that only a dev-only one brings in: none may be imported by the package.
FORBIDDEN = ("playwright", "jsonschema", "mlserver_sklearn", "mlserver_xgboost", "kubernetes_validate")
# Not importable as modules: `python -m learning_machine` (runs the CLI), the Streamlit script (runs the app);
# the alembic migrations are no package (pkgutil does not walk into them) and are skipped by name too.
SKIP = ("learning_machine.__main__", "learning_machine.dashboard.app")
# A forbidden package a module may pull in all the same, because a runtime dependency needs it, with the one
# module allowed to. Those modules are imported last, so that any other module pulling the package in first
# is the one named.
RUNTIME_NEEDS: dict[str, str] = {}

PROBE = """
import importlib, json, pkgutil, sys

forbidden, skip, last = {forbidden!r}, {skip!r}, {last!r}
bench = lambda: sorted(m for m in sys.modules if m == "learning_machine.bench" or m.startswith("learning_machine.bench."))

# What `lm` imports before any command runs (`lm bench` imports the harness in its command).
importlib.import_module("learning_machine.cli.app")
cli = {{"bench": bench(), "forbidden": [m for m in forbidden if m in sys.modules]}}

import learning_machine

names = [info.name for info in pkgutil.walk_packages(learning_machine.__path__, "learning_machine.")
         if info.name not in skip and ".migrations" not in info.name]
first = {{module: "learning_machine.cli.app" for module in cli["forbidden"]}}
for name in [n for n in names if n not in last] + [n for n in names if n in last]:
    importlib.import_module(name)
    for module in forbidden:
        if module in sys.modules and module not in first:
            first[module] = name
print(json.dumps({{"cli": cli, "imported": names, "first": first}}))
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    """One fresh interpreter: `learning_machine.cli.app` alone, then every module of the package."""
    code = PROBE.format(forbidden=FORBIDDEN, skip=SKIP, last=tuple(RUNTIME_NEEDS.values()))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_module_was_imported(probe):
    imported = set(probe["imported"])
    for part in ("cli.app", "bench.harness", "components.steps", "pipelines.training", "serving.runtimes",
                 "dashboard.views", "gateway.app", "registry.tracker", "store.db", "k8s.manifests"):
        assert f"learning_machine.{part}" in imported, part
    assert not [m for m in imported if m in SKIP or ".migrations" in m]


def test_no_module_imports_a_dev_only_package(probe):
    """Each forbidden package found in sys.modules, with the first module whose import brought it in."""
    pulled = {module: by for module, by in probe["first"].items() if RUNTIME_NEEDS.get(module) != by}
    assert pulled == {}, "\n".join(f"{module} was imported by importing {by}" for module, by in pulled.items())


def test_lm_does_not_import_the_benchmark_harness(probe):
    assert probe["cli"]["bench"] == [], probe["cli"]["bench"]
    assert probe["cli"]["forbidden"] == [], probe["cli"]["forbidden"]


def test_the_forbidden_contracts_cover_every_top_level_module():
    """pyproject.toml's forbidden contracts list their source modules one by one (a contract cannot say "all
    but one"): each must name every top-level module of the package but the one it exempts."""
    top = {f"learning_machine.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)])}
    contracts = {c["id"]: c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
                 ["contracts"]}
    assert set(contracts["dev-only"]["source_modules"]) == top - {"learning_machine.bench"}
    assert set(contracts["dev-only"]["forbidden_modules"]) == set(FORBIDDEN)
    assert set(contracts["mlflow"]["source_modules"]) == top - {"learning_machine.registry"}


def test_describing_the_services_creates_nothing_on_disk(tmp_path):
    """The chart renderer builds the same service descriptions `lm up` starts: describing must not write."""
    from learning_machine.embedded.model_server import model_server_service
    from learning_machine.embedded.stack import embedded_services
    from learning_machine.k8s.chart import chart_services_json
    from learning_machine.settings import Settings

    home = tmp_path / "home"
    settings = Settings(home=home)
    assert [s.name for s in embedded_services(settings)]
    model_server_service(settings)
    chart_services_json(settings)
    assert not home.exists()


def test_backend_names_are_checked_when_the_settings_load(tmp_path):
    from learning_machine.backends import DRIFT_DETECTORS, MODEL_KINDS
    from learning_machine.errors import ConfigurationError
    from learning_machine.model.drift import DETECTOR_TYPES
    from learning_machine.model.training import MODEL_KINDS as KINDS
    from learning_machine.settings import load_settings

    assert set(KINDS) == set(MODEL_KINDS) and set(DETECTOR_TYPES) == set(DRIFT_DETECTORS)
    for field, value, listed in (("deployer", "sldon", "local, none, seldon"),
                                 ("pipeline_runner", "argo", "kubeflow, local"),
                                 ("model_kind", "forest", "logistic-regression, xgboost"),
                                 ("drift_detector", "MMD", "ChiSquareDrift, KSDrift, TabularDrift")):
        with pytest.raises(ConfigurationError, match=f"LM_{field.upper()}: .*{value!r}.* are: {listed}"):
            load_settings(home=tmp_path, **{field: value})
