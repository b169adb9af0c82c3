"""Custom resources checked offline against their CRD schemas, as `kubectl apply` with strict field
validation would. Test tooling: it needs jsonschema and the CRD YAML of Seldon Core and KFP, which the
project does not ship. They are read from ``LM_CRD_DIR``, else from ``../shared/crds`` beside the checkout
(this team's CI provides it). Without them the dedicated checks are skipped and the others warn, saying
how to provide them; nothing passes silently."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from learning_machine.errors import ConfigurationError

Resource = dict[str, Any]

CRD_FILES = {
    ("machinelearning.seldon.io", "SeldonDeployment"): "seldon-core-v1.17.1-seldondeployments.yaml",
    ("mlops.seldon.io", "Model"): "seldon-core-v2.6.0-models.yaml",
    ("mlops.seldon.io", "Pipeline"): "seldon-core-v2.6.0-pipelines.yaml",
    ("mlops.seldon.io", "Server"): "seldon-core-v2.6.0-servers.yaml",
    ("mlops.seldon.io", "Experiment"): "seldon-core-v2.6.0-experiments.yaml",
    ("kubeflow.org", "ScheduledWorkflow"): "kfp-2.17.0-scheduledworkflow.yaml",
}
_SCHEMAS: dict[tuple[str, str, str], dict[str, Any]] = {}


def crd_dir() -> Path:
    """``LM_CRD_DIR``, else ``../shared/crds`` next to the project root."""
    env = os.environ.get("LM_CRD_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "crds"
    if not path.is_dir():
        raise ConfigurationError(f"CRD folder {path} does not exist; {HOW_TO_PROVIDE}")
    return path


HOW_TO_PROVIDE = ("set LM_CRD_DIR to a folder holding " + ", ".join(sorted(set(CRD_FILES.values())))
                  + " (for example `kubectl get crd seldondeployments.machinelearning.seldon.io -o yaml` on a "
                  "cluster with Seldon Core 1.17 installed)")


def crds_available() -> bool:
    try:
        crd_dir()
    except ConfigurationError:
        return False
    return True


requires_crds = pytest.mark.skipif(not crds_available(), reason=f"no CRD schemas to check against: {HOW_TO_PROVIDE}")


class CRDSchemasMissing(UserWarning):
    """A CRD-schema check inside a broader test was not made (no CRD schemas here)."""


def crd_problems(resource: Resource) -> list[str]:
    """:func:`validate_resource` where the CRD schemas are available; else no problems, with a warning
    (shown in pytest's summary) that the check was skipped and how to provide the schemas."""
    if not crds_available():
        warnings.warn(f"CRD-schema check of {resource.get('kind')} skipped: {HOW_TO_PROVIDE}", CRDSchemasMissing,
                      stacklevel=2)
        return []
    return validate_resource(resource)


def crd_schema(group: str, kind: str, version: str, folder: Path | None = None) -> dict[str, Any]:
    """The JSON schema of ``kind`` at ``version`` from its CRD (OpenAPI v3 made strict JSON schema)."""
    key = (group, kind, version)
    if key not in _SCHEMAS:
        try:
            file = CRD_FILES[(group, kind)]
        except KeyError:
            raise ConfigurationError(f"no CRD known for {kind} ({group})") from None
        with open((folder or crd_dir()) / file) as fh:
            # CSafeLoader: the SeldonDeployment CRD is 2.4 MB, 0.4 s instead of ~10 s.
            crd = yaml.load(fh, Loader=yaml.CSafeLoader)
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        if version not in versions:
            raise ConfigurationError(f"{kind} has no version {version}; the CRD has {', '.join(versions)}")
        _SCHEMAS[key] = _strict(versions[version]["schema"]["openAPIV3Schema"])
    return _SCHEMAS[key]


def _strict(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON schema: ``nullable`` allows null, ``int-or-string`` allows
    both, ``preserve-unknown-fields`` keeps an object open, and every other object with declared
    properties rejects unknown keys (what `kubectl apply`'s strict field validation does)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validate_resource(resource: Resource, folder: Path | None = None) -> list[str]:
    """Every problem of ``resource`` against its CRD schema (empty when valid)."""
    import jsonschema

    group, _, version = str(resource.get("apiVersion", "")).rpartition("/")
    schema = crd_schema(group, str(resource.get("kind")), version, folder)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(resource), key=lambda e: list(e.absolute_path))]
