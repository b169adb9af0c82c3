"""Run a rendered chart's containers as local processes (no cluster, no Docker here): each container's rendered
command with its rendered environment (Secrets resolved from the rendered Secret objects, ``$(VAR)`` expanded
as the kubelet does), its volumes materialised in a folder of its own, and every Service name of the release
resolved to a loopback address of its own (127.a.b.N) by a ``sitecustomize`` on PYTHONPATH that patches
``socket.getaddrinfo`` (Service name -> address, Service port -> target port, as kube-proxy would) and binds
``0.0.0.0`` to the "pod's" own address (so every pod can keep its rendered port). All our services are
Python, so that shim reaches every connection they make (httpx, urllib3, psycopg resolve through it)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Resource = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]

SITECUSTOMIZE = '''\
"""Test shim (tests/charts/chart_run.py): cluster DNS, pod addresses and volume mount paths for a local process."""
import importlib.abc
import importlib.machinery
import json
import os
import socket
import sys

_SERVICES = json.loads(os.environ.get("LM_TEST_SERVICES", "{}"))
_POD_IP = os.environ.get("LM_TEST_POD_IP")
_LOG = os.environ.get("LM_TEST_RESOLVER_LOG")
_MOUNTS = json.loads(os.environ.get("LM_TEST_MOUNTS", "{}"))
_getaddrinfo = socket.getaddrinfo


def _getaddrinfo_for_services(host, port, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    entry = _SERVICES.get(name.rstrip(".").lower()) if isinstance(name, str) else None
    if entry is None:
        return _getaddrinfo(host, port, *args, **kwargs)
    address, ports = entry
    target = ports.get(str(port), port) if port is not None else None
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(json.dumps({"pod": _POD_IP, "name": name, "port": port}) + "\\n")
    return _getaddrinfo(address, target, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo_for_services
_bind = socket.socket.bind


def _bind_to_pod(self, address):
    # A pod's 0.0.0.0 is its own network namespace: here, its own loopback address.
    if _POD_IP and self.family == socket.AF_INET and isinstance(address, tuple) and address[0] in ("0.0.0.0", ""):
        address = (_POD_IP, *address[1:])
    return _bind(self, address)


socket.socket.bind = _bind_to_pod


def _mounted(path):
    for mount, local in _MOUNTS.items():
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return local + path[len(mount.rstrip("/")):]
    return path


class _InClusterPaths(importlib.abc.MetaPathFinder):
    """The kubernetes client reads the ServiceAccount token and CA at fixed paths: read them where the
    pod's volume mount is materialised (only if the rendered mountPath is that folder)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "kubernetes.config.incluster_config":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.SERVICE_TOKEN_FILENAME = _mounted(module.SERVICE_TOKEN_FILENAME)
            module.SERVICE_CERT_FILENAME = _mounted(module.SERVICE_CERT_FILENAME)

        spec.loader.exec_module = exec_module
        return spec


if _MOUNTS:
    sys.meta_path.insert(0, _InClusterPaths())
'''


def loopback_base() -> str:
    """A /24 of 127/8 for this run (127.a.b.0), unlikely to collide with anything else on the machine."""
    return f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"


def service_names(name: str, namespace: str) -> list[str]:
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


@dataclass
class Cluster:
    """The rendered objects, the address of each Service and what the pods need (all local)."""

    resources: list[Resource]
    namespace: str
    folder: Path
    services: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)  # DNS name -> address, ports
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per pod: what the kubelet injects
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.site = self.folder / "site"
        self.site.mkdir(parents=True, exist_ok=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.resolver_log = self.folder / "resolved.jsonl"

    # -- the objects ---------------------------------------------------------------------------------
    def one(self, kind: str, suffix: str) -> Resource:
        found = [r for r in self.resources if r["kind"] == kind and r["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[r['metadata']['name'] for r in found]}"
        return found[0]

    def secret_value(self, name: str, key: str) -> str:
        secret = next((r for r in self.resources if r["kind"] == "Secret" and r["metadata"]["name"] == name), None)
        assert secret is not None, f"Secret {name} is not rendered: nothing would start"
        data = secret.get("stringData", {})
        assert key in data, f"Secret {name} has no key {key}"
        return str(data[key])

    def route(self, service: str, address: str, ports: dict[int, int]) -> None:
        """Resolve the Service ``service`` (every in-cluster spelling) to ``address``, port by port."""
        for name in service_names(service, self.namespace):
            self.services[name] = (address, {str(k): v for k, v in ports.items()})

    def route_rendered(self, suffix: str, address: str) -> None:
        """A rendered Service to ``address`` with its own port -> targetPort (named ports via the pods)."""
        service = self.one("Service", suffix)
        ports = {}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):  # a named port: the selected Deployment's container port of that name
                deployment = self.one("Deployment", suffix)
                target = next(p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
                              for p in c.get("ports", []) if p.get("name") == target)
            ports[port["port"]] = int(target)
        self.route(service["metadata"]["name"], address, ports)

    @contextlib.contextmanager
    def resolving(self) -> Iterator[None]:
        """The same Service resolution inside this (the test's) process."""
        original = socket.getaddrinfo

        def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            entry = self.services.get(str(host).rstrip(".").lower())
            if entry is None:
                return original(host, port, *args, **kwargs)
            return original(entry[0], entry[1].get(str(port), port), *args, **kwargs)

        socket.getaddrinfo = resolve
        try:
            yield
        finally:
            socket.getaddrinfo = original

    # -- a container as a process --------------------------------------------------------------------
    def container_env(self, pod: str, workload: Resource, container: Resource, pod_ip: str,
                      image_env: dict[str, str], overrides: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """(environment, mounts): the image's ENV, then the container's env in order (valueFrom secretKeyRef
        resolved, $(VAR) expanded from the variables before it, as the kubelet does), paths under a volume's
        mountPath moved to the folder that stands for the volume."""
        spec = workload["spec"]["template"]["spec"] if workload["kind"] != "Pod" else workload["spec"]
        pod_dir = self.folder / "pods" / pod
        mounts = {}
        for mount in container.get("volumeMounts", []):
            local = pod_dir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            self._materialise(volume, local, spec)
            mounts[mount["mountPath"]] = str(local)
        env = dict(image_env)
        for item in container.get("env", []):
            if "value" in item:
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                               str(item["value"]))
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                value = self.secret_value(ref["name"], ref["key"])
            env[item["name"]] = value
        env.update(overrides or {})
        env.update(self.extra_env.get(pod, {}))
        for key, value in list(env.items()):
            if key == "PATH":  # the host's venv stands in for the image's: not a path inside the pod
                continue
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount.rstrip("/") + "/"):
                    env[key] = local + value[len(mount.rstrip("/")):]
        env.update({"PYTHONPATH": str(self.site), "LM_TEST_SERVICES": json.dumps(self.services),
                    "LM_TEST_POD_IP": pod_ip, "LM_TEST_RESOLVER_LOG": str(self.resolver_log),
                    "LM_TEST_MOUNTS": json.dumps({m: d for m, d in mounts.items() if m != "/tmp"})})
        return env, mounts

    def _materialise(self, volume: Resource, local: Path, spec: Resource) -> None:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                (local / item["path"]).write_text(self.secret_value(volume["secret"]["secretName"], item["key"]))
        elif "projected" in volume:
            # The ServiceAccount token volume: the kubelet writes a token for the pod's ServiceAccount, the
            # cluster CA (kube-root-ca.crt) and the namespace; here the fake API server issues the token.
            for source in volume["projected"]["sources"]:
                if "serviceAccountToken" in source:
                    sa = spec.get("serviceAccountName", "default")
                    (local / source["serviceAccountToken"]["path"]).write_text(self.issue_token(sa))
                elif "configMap" in source:
                    for item in source["configMap"]["items"]:
                        (local / item["path"]).write_text(self.cluster_ca.read_text())
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"]["items"]:
                        (local / item["path"]).write_text(self.namespace)

    issue_token: Any = None  # set by the test: ServiceAccount name -> token (the fake API server's)
    cluster_ca: Path = Path()

    def start(self, pod: str, workload: Resource, container_name: str, pod_ip: str, image_env: dict[str, str],
              overrides: dict[str, str] | None = None, *, wait: float | None = None) -> subprocess.Popen[bytes]:
        """Start the container's rendered command (+ args) as a process in its own session; with ``wait``,
        run it to completion (a Job) and fail with its log unless it exits 0."""
        spec = workload["spec"]["template"]["spec"] if workload["kind"] != "Pod" else workload["spec"]
        container = next(c for c in [*spec.get("initContainers", []), *spec["containers"]]
                         if c["name"] == container_name)
        env, _ = self.container_env(pod, workload, container, pod_ip, image_env, overrides)
        command = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
                   for arg in [*container["command"], *container.get("args", [])]]
        log = self.folder / "logs" / f"{pod}-{container_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs[f"{pod}/{container_name}"] = log
        cwd = self.folder / "pods" / pod
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        if wait is None:
            self.procs.append(proc)
            return proc
        try:
            code = proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self._stop(proc)
            raise AssertionError(f"{pod}/{container_name} did not finish in {wait} s:\n{self.tail(pod, container_name)}") from None
        assert code == 0, f"{pod}/{container_name} exited {code}:\n{self.tail(pod, container_name)}"
        return proc

    def tail(self, pod: str, container: str, chars: int = 3000) -> str:
        path = self.logs.get(f"{pod}/{container}")
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else "(no log)"

    def all_tails(self) -> str:
        return "\n".join(f"--- {key}\n{path.read_text(errors='replace')[-1500:]}" for key, path in self.logs.items()
                         if path.exists())

    def resolved(self) -> list[dict[str, Any]]:
        if not self.resolver_log.exists():
            return []
        return [json.loads(line) for line in self.resolver_log.read_text().splitlines() if line.strip()]

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the whole session: servers fork workers
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self._stop(proc)


def wait_until(check: Any, timeout: float, what: str, *, interval: float = 0.5, alive: Any = None) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with ``what`` (and ``alive()``'s story)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            result = check()
        except Exception as exc:
            last = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f} s (last: {last!r})")
