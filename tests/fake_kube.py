"""A FAKE Kubernetes API server, for tests only: no Kubernetes API server can run here. It is the one stand-in
the tests allow themselves; everything that talks to it is real (the kubernetes client, the `seldon` deployer).

* :class:`FakeCustomObjectsApi`: an in-memory ``CustomObjectsApi`` (namespaced custom objects: get, create,
  and a JSON merge patch as RFC 7386 defines it: maps merge, null deletes, lists are replaced whole) for
  in-process tests.
* :class:`FakeKubeApiServer`: the same store behind HTTPS, as a pod's in-cluster client reaches the API server
  (``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, a ServiceAccount bearer token, the cluster
  CA). It authenticates the tokens it issued per ServiceAccount, authorises every call against the rendered
  Roles and RoleBindings (as RBAC does: verb, API group, resource, namespace) and validates what is written
  against the CRD schemas when they are available. It is not Kubernetes: no admission, no controllers."""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

Resource = dict[str, Any]


class FakeCustomObjectsApi:
    """An in-memory stand-in for kubernetes.client.CustomObjectsApi (namespaced custom objects only)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str, str], dict] = {}
        self.calls: list[str] = []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(f"get {name}")
        try:
            return copy.deepcopy(self.objects[(group, version, namespace, plural, name)])
        except KeyError:
            raise ApiException(status=404, reason="Not Found") from None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(f"create {body['metadata']['name']}")
        self.objects[(group, version, namespace, plural, body["metadata"]["name"])] = copy.deepcopy(body)
        return body

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(f"patch {name}")
        key = (group, version, namespace, plural, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        self.objects[key] = merge_patch(self.objects[key], body)
        return copy.deepcopy(self.objects[key])


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the JSON merge patch ``patch`` applied (RFC 7386, what the API server does with
    ``application/merge-patch+json``): maps merge key by key, a null value deletes its key, anything else
    (a list included) replaces what was there."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


PATH = re.compile(r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
                  r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$")
VERBS = {("GET", True): "get", ("GET", False): "list", ("POST", False): "create", ("PATCH", True): "patch",
         ("PUT", True): "update", ("DELETE", True): "delete"}


def self_signed(ip: str, folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (the cluster CA a pod's ca.crt holds) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.DNSName("kubernetes.default.svc")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "ca.crt", folder / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeKubeApiServer:
    """The FAKE API server over HTTPS on ``host``: custom objects in :class:`FakeCustomObjectsApi`, RBAC from
    the given Role and RoleBinding objects, one bearer token per ServiceAccount (:meth:`token_for`)."""

    def __init__(self, host: str, folder: Path, rbac_objects: list[Resource], *,
                 validate: Any = None) -> None:
        self.store = FakeCustomObjectsApi()
        self.requests: list[dict[str, Any]] = []  # every call: who, verb, path, the answer's status
        self.roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in rbac_objects
                      if r["kind"] == "Role"}
        self.bindings = [r for r in rbac_objects if r["kind"] == "RoleBinding"]
        self.validate = validate
        self._tokens: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.ca, key = self_signed(host, folder)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                return

            def _answer(self, status: int, body: Resource) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                status, answer = server.handle(self.command, self.path, self.headers.get("Authorization", ""),
                                               self.headers.get("Content-Type", ""), body)
                self._answer(status, answer)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca, key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-kube-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def token_for(self, namespace: str, service_account: str) -> str:
        """The bearer token a pod running as ``service_account`` gets in its projected volume."""
        token = f"fake-sa-token.{service_account}.{secrets.token_hex(16)}"
        with self._lock:
            self._tokens[token] = (namespace, service_account)
        return token

    def allowed(self, who: tuple[str, str], verb: str, group: str, plural: str, namespace: str) -> bool:
        """RBAC: some RoleBinding in ``namespace`` binds ``who`` to a Role with a rule for this request."""
        for binding in self.bindings:
            if binding["metadata"]["namespace"] != namespace or binding["roleRef"]["kind"] != "Role":
                continue
            if not any(s["kind"] == "ServiceAccount" and (s.get("namespace"), s["name"]) == who
                       for s in binding["subjects"]):
                continue
            role = self.roles.get((namespace, binding["roleRef"]["name"]), {"rules": []})
            for rule in role["rules"]:
                if (group in rule["apiGroups"] and plural in rule["resources"]
                        and (verb in rule["verbs"] or "*" in rule["verbs"])):
                    return True
        return False

    def handle(self, method: str, path: str, authorization: str, content_type: str,
               body: Any) -> tuple[int, Resource]:
        scheme, _, token = authorization.partition(" ")
        who = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        match = PATH.match(path)
        record: dict[str, Any] = {"method": method, "path": path, "who": who}
        self.requests.append(record)

        def status(code: int, reason: str, message: str) -> tuple[int, Resource]:
            record["status"] = code
            return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                          "reason": reason, "code": code}

        if who is None:
            return status(401, "Unauthorized", "no valid bearer token")
        if match is None:
            return status(404, "NotFound", f"the fake API server serves namespaced custom objects only: {path}")
        group, version, ns, plural, name = match.group("group", "version", "ns", "plural", "name")
        verb = VERBS.get((method, name is not None))
        record["verb"] = verb
        if verb is None or not self.allowed(who, verb, group, plural, ns):
            return status(403, "Forbidden", f"system:serviceaccount:{who[0]}:{who[1]} cannot {verb or method} "
                          f"resource {plural!r} in API group {group!r} in the namespace {ns!r}")
        try:
            if verb == "get":
                record["status"] = 200
                return 200, self.store.get_namespaced_custom_object(group, version, ns, plural, name)
            if verb in ("create", "patch"):
                if verb == "patch" and content_type.split(";")[0] != "application/merge-patch+json":
                    return status(415, "UnsupportedMediaType", f"the fake serves merge patches only, not {content_type}")
                candidate = body if verb == "create" else merge_patch(
                    self.store.get_namespaced_custom_object(group, version, ns, plural, name), body)
                problems = self.validate(candidate) if self.validate else []
                if problems:
                    return status(422, "Invalid", "; ".join(problems))
                if verb == "create":
                    answer = self.store.create_namespaced_custom_object(group, version, ns, plural, body)
                else:
                    answer = self.store.patch_namespaced_custom_object(group, version, ns, plural, name, body)
                record["status"] = 201 if verb == "create" else 200
                return record["status"], answer
        except ApiException as exc:
            return status(int(exc.status), str(exc.reason), str(exc.reason))
        return status(405, "MethodNotAllowed", f"the fake does not implement {verb}")
