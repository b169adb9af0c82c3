"""The package's layout at run time (DESIGN.md "Layout"): importing any module of learning_machine pulls in no
dev-only package, and `lm` does not import the benchmark harness. Imports are checked in a fresh interpreter;
the static side (layers, forbidden imports) is import-linter's (`make lint`, contracts in pyproject.toml).

The installs (docs/install.md): each part of the package belongs to one extra of pyproject.toml, every
third-party module a part imports is declared in its extra (or one that extra includes), a part imports only
parts its extra carries, and the locked installs (uv.lock) of the client and the platform hold no MLServer,
alibi or alibi-detect."""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

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
    # serving-only: all but the serving extra's parts (the model server, the harness, two modules of the model).
    model = {f"learning_machine.model.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE / "model")])}
    serving = {name for name, extra in OWNERS.items() if extra == "serving"}
    assert set(contracts["serving-only"]["source_modules"]) == (
        top - {"learning_machine.serving", "learning_machine.bench", "learning_machine.model"}) | (model - serving)
    assert set(contracts["serving-only"]["forbidden_modules"]) >= {"mlserver", "alibi", "alibi_detect"} | serving


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


# -- the installs ------------------------------------------------------------------------------------------------
# The extra of pyproject.toml that owns each part of the package (the longest matching name wins); None is the base
# install, the REST client. A new top-level module must be given an owner here.
OWNERS: dict[str, str | None] = {
    "learning_machine": None,
    "learning_machine.errors": None,
    "learning_machine.backends": None,
    "learning_machine.clients": None,
    "learning_machine.logs": None,
    "learning_machine.settings": "core",
    "learning_machine.data": "core",
    "learning_machine.model": "core",
    "learning_machine.registry": "core",
    "learning_machine.components": "pipelines",
    "learning_machine.pipelines": "pipelines",
    "learning_machine.runners": "pipelines",
    "learning_machine.lifecycle": "pipelines",
    "learning_machine.deployers": "pipelines",
    "learning_machine.k8s": "pipelines",  # manifests: the Seldon deployer renders them in a KFP step
    "learning_machine.embedded.model_server": "pipelines",  # the local deployer reloads the model server
    "learning_machine.embedded.processes": "pipelines",
    "learning_machine.__main__": "platform",
    "learning_machine.cli": "platform",
    "learning_machine.gateway": "platform",
    "learning_machine.loop": "platform",
    "learning_machine.dashboard": "platform",
    "learning_machine.store": "platform",
    "learning_machine.embedded": "platform",
    "learning_machine.k8s.chart": "platform",
    "learning_machine.serving": "serving",
    "learning_machine.model.explain": "serving",  # anchors: alibi
    "learning_machine.model.drift_detector": "serving",  # alibi-detect
    "learning_machine.bench": "bench",
}
# Imports across extras that are allowed all the same: `lm bench` needs the bench extra (as the contract's
# ignore_imports in pyproject.toml).
CROSSING = {("learning_machine.cli.bench", "learning_machine.bench.harness")}
# What only the serving install may carry (with what they bring in), by distribution name.
SERVING_ONLY = {"mlserver", "alibi", "alibi-detect", "spacy", "transformers", "numba", "opencv-python"}


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _owner(module: str) -> str | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in OWNERS:
            return OWNERS[".".join(parts[:end])]
    raise AssertionError(f"{module} has no owner in OWNERS")


@pytest.fixture(scope="module")
def extras() -> dict[str | None, dict[str, Any]]:
    """Per extra (None: the base): the extras it includes (itself, the base, its self-references, recursively)
    and the distributions it declares, its own and theirs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements: dict[str | None, list[Requirement]] = {None: [Requirement(r) for r in project["dependencies"]]}
    for extra, listed in project["optional-dependencies"].items():
        requirements[extra] = [Requirement(r) for r in listed]

    def included(extra: str | None) -> set[str | None]:
        out: set[str | None] = {extra, None}
        for req in requirements[extra]:
            if _dist(req.name) == _dist(project["name"]):
                for name in req.extras:
                    out |= included(name)
        return out

    return {extra: {"includes": included(extra),
                    "declares": {_dist(r.name) for e in included(extra) for r in requirements[e]}}
            for extra in requirements}


def _imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every absolute import (module name, line), module-level or in a function, but not under TYPE_CHECKING.
    ``from a import b`` yields ``a.b``, which names module b when it is one."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (item for child in node.orelse for item in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from ((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
        yield from _imports(node)


def _package_imports() -> Iterator[tuple[str, str, int]]:
    """(importing module, imported module, line) over every source file of the package, migrations included."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for imported, line in _imports(ast.parse(path.read_text(), str(path))):
            yield module, imported, line


def test_every_part_of_the_package_has_an_extra_that_exists(extras):
    top = {f"learning_machine.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)])}
    assert top <= set(OWNERS), sorted(top - set(OWNERS))
    assert set(OWNERS.values()) <= set(extras), set(OWNERS.values()) - set(extras)
    assert not [name for name in OWNERS if name != "learning_machine" and not
                (PACKAGE.parent / name.replace(".", "/")).is_dir() and
                not (PACKAGE.parent / f"{name.replace('.', '/')}.py").is_file()]


def test_every_imported_package_is_declared_in_the_extra_that_owns_the_importer(extras):
    """A third-party import must be declared (by the distribution that provides the module) in the importer's
    extra or one it includes: an undeclared one works here, where everything is installed, and fails in the
    image or install of that part."""
    provided_by = packages_distributions()
    undeclared = []
    for module, imported, line in _package_imports():
        top = imported.split(".")[0]
        if top in sys.stdlib_module_names or top in ("learning_machine", "__future__"):
            continue
        extra = _owner(module)
        dists = {_dist(d) for d in provided_by.get(top, [])}
        if not dists & extras[extra]["declares"]:
            undeclared.append(f"{module}:{line} imports {top} ({', '.join(sorted(dists)) or 'not installed'}), "
                              f"not declared in {extra or 'the base'}")
    assert undeclared == [], "\n".join(undeclared)


def test_each_part_imports_only_parts_its_extra_installs(extras):
    crossing = []
    for module, imported, line in _package_imports():
        if not imported.startswith("learning_machine.") or any(
                module == source and imported.startswith(f"{target}.") for source, target in CROSSING):
            continue
        importer, needed = _owner(module), _owner(imported)
        if needed not in extras[importer]["includes"]:
            crossing.append(f"{module}:{line} ({importer or 'base'}) imports {imported} ({needed})")
    assert crossing == [], "\n".join(crossing)


def _locked(extra: str | None) -> set[str]:
    """The distributions uv.lock installs for the project with ``extra`` (markers ignored: a superset)."""
    packages = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    project = packages["learning-machine"]
    todo = list(project["dependencies"]) + list(project["optional-dependencies"].get(extra, []) if extra else [])
    seen: set[str] = set()
    while todo:
        dep = todo.pop()
        package = packages[dep["name"]]
        todo += [d for d in package.get("dependencies", []) if d["name"] not in seen]
        for name in dep.get("extra", []):
            todo += package.get("optional-dependencies", {}).get(name, [])
        seen.add(dep["name"])
    return seen


def test_the_locked_installs_carry_the_serving_packages_only_where_served(extras):
    client, platform, serving = _locked(None), _locked("platform"), _locked("serving")
    assert client <= {"httpx", "orjson", "anyio", "certifi", "httpcore", "h11", "idna", "sniffio",
                      "typing-extensions", "exceptiongroup"}, sorted(client)
    assert not platform & SERVING_ONLY, sorted(platform & SERVING_ONLY)
    assert not _locked("pipelines") & SERVING_ONLY
    assert {"mlserver", "alibi", "alibi-detect", "httptools"} <= serving
    assert not serving & {"streamlit", "kfp", "psycopg"}, sorted(serving & {"streamlit", "kfp", "psycopg"})
    # What the images run besides our code: MLflow's server with the chart's basic-auth app (Flask-WTF) and
    # PostgreSQL backend, KFP's executor, uvicorn with httptools.
    assert {"mlflow", "flask-wtf", "psycopg-binary", "kfp", "httptools", "boto3"} <= platform
    assert _locked("all") == platform | serving


def test_each_image_installs_its_extra():
    for dockerfile, extra in ((ROOT / "Dockerfile", "platform"), (ROOT / "serving" / "Dockerfile", "serving")):
        syncs = [line for line in dockerfile.read_text().splitlines() if "uv sync" in line]
        assert len(syncs) == 2 and all(f"--no-dev --extra {extra} " in line for line in syncs), (dockerfile, syncs)


def test_lm_names_the_extra_when_the_install_lacks_it():
    """From the base install (the client), `lm` says which extra it needs instead of a traceback."""
    code = "import sys; sys.modules['typer'] = None; from learning_machine.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "learning-machine[platform]" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_model_server_names_the_extra_when_mlserver_is_missing(monkeypatch, tmp_path):
    from learning_machine.embedded import model_server, processes
    from learning_machine.errors import ConfigurationError

    monkeypatch.setattr(processes, "venv_tool", lambda name: str(tmp_path / name))
    with pytest.raises(ConfigurationError, match=r"learning-machine\[serving\]"):
        model_server.mlserver_command(tmp_path)
