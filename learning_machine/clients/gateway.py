"""A Python client of the Learning Machine REST API (the gateway). The data source (`lm stream`), the
monitor and the dashboard use it; it turns problem details back into the platform's errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from learning_machine.errors import LearningMachineError, ServiceUnavailableError


class GatewayError(LearningMachineError):
    """The gateway answered with a problem (its status and detail are kept)."""

    code = "gateway-error"

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"),
                         detail=problem.get("errors"))
        self.status = status
        self.problem = dict(problem)


class LearningMachineClient:
    """Calls the gateway with a bearer token; one keep-alive connection pool."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LearningMachineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._response(method, path, **kwargs)
        return response.json() if response.content else None

    def _response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The gateway's answer to one request; a problem (status 400 or above) raises :class:`GatewayError`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(f"the gateway at {self.url} is unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:300] or f"HTTP {response.status_code}"}
            if not isinstance(problem, Mapping):
                problem = {"detail": str(problem)[:300]}
            raise GatewayError(response.status_code, problem)
        return response

    # -- the API -----------------------------------------------------------------------------------
    def predict(self, records: Sequence[Mapping[str, Any]], *, request_id: str | None = None) -> list[dict[str, Any]]:
        """Predictions for one or more records (sent as one batch). Send the same ``request_id`` when
        retrying a batch whose answer was lost: the gateway then answers with what it stored the first
        time instead of storing the predictions twice."""
        headers = {"X-Request-ID": request_id} if request_id else None
        if len(records) == 1:
            return [self._call("POST", "/v1/predictions", json=dict(records[0]), headers=headers)]
        return list(self._call("POST", "/v1/predictions", json={"records": [dict(r) for r in records]},
                               headers=headers)["predictions"])

    def explain(self, record_id: str, method: str = "exact") -> dict[str, Any]:
        return dict(self._call("POST", "/v1/explanations", json={"record_id": record_id, "method": method}))

    def outcome(self, record_id: str, outcome: int, *, overwrite: bool = False) -> dict[str, Any]:
        params = {"overwrite": "true"} if overwrite else None
        return dict(self._call("POST", "/v1/outcomes", json={"record_id": record_id, "outcome": outcome},
                               params=params))

    def page(self, path: str, **params: Any) -> dict[str, Any]:
        """One page of a listing (`/v1/patients`, `/v1/predictions`, `/v1/monitoring`, `/v1/events`)."""
        return dict(self._call("GET", path, params={k: v for k, v in params.items() if v is not None}))

    def patient(self, record_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/patients/{record_id}"))

    def models(self) -> Any:
        return self._call("GET", "/v1/models")

    def whoami(self) -> dict[str, Any]:
        """The token's name and role."""
        return dict(self._call("GET", "/v1/whoami"))

    def model_card(self, version: str = "champion") -> dict[str, Any]:
        """Model facts of a version: training data, metrics overall and per subgroup, reference ranges."""
        return dict(self._call("GET", "/v1/model-card", params={"version": version}))

    def change_record(self, version: str = "champion") -> dict[str, Any]:
        """A version's change record: the immutable part (digest verified by the gateway) and its rollout."""
        return dict(self._call("GET", f"/v1/models/{version}/record"))

    def label(self, version: str = "champion", format: str = "json") -> Any:
        """A version's model-facts label: a dict (``json``) or the text of a ``markdown`` or ``html`` document."""
        if format == "json":
            return dict(self._call("GET", f"/v1/models/{version}/label"))
        return self._response("GET", f"/v1/models/{version}/label", params={"format": format}).text

    def label_diff(self, version: str = "champion", against: str | None = None) -> dict[str, Any]:
        """What changed in a version's label from another's (default: the champion it was compared with)."""
        params = {"against": against} if against else None
        return dict(self._call("GET", f"/v1/models/{version}/label/diff", params=params))

    # -- the admin's side --------------------------------------------------------------------------
    def promote(self, version: str, reason: str = "manual") -> dict[str, Any]:
        return dict(self._call("POST", "/v1/models/promote", json={"version": version, "reason": reason}))

    def rollback(self, to_version: str | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/models/rollback", json={"to_version": to_version}))

    def awaiting_approval(self) -> list[dict[str, Any]]:
        """Versions the change-control plan held for an admin's decision."""
        return list(self._call("GET", "/v1/models/awaiting-approval"))

    def decide_approval(self, version: str, decision: str, reason: str) -> dict[str, Any]:
        """``decision``: ``approve`` (it becomes the champion) or ``reject``; ``reason`` is recorded."""
        return dict(self._call("POST", f"/v1/models/{version}/approval",
                               json={"decision": decision, "reason": reason}))

    def request_retraining(self, reason: str = "manual") -> dict[str, Any]:
        return dict(self._call("POST", "/v1/retrain", json={"reason": reason}))

    # -- the monitor's side ------------------------------------------------------------------------
    def feed(self, after_id: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Predictions after ``after_id`` in arrival order, with features and outcomes."""
        return dict(self._call("GET", "/v1/feed/predictions", params={"after_id": after_id, "limit": limit}))

    def labelled(self, limit: int = 500, model_version: str | None = None) -> list[dict[str, Any]]:
        """The most recent predictions whose outcome has arrived, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if model_version is not None:
            params["model_version"] = model_version
        return list(self._call("GET", "/v1/feed/labelled", params=params)["items"])

    def post_shadow(self, model_name: str, model_version: str, items: Sequence[tuple[int, float]]) -> int:
        """Store a shadow challenger's scores ``(prediction_id, probability)``; how many were new."""
        stored = 0
        for start in range(0, len(items), 5000):
            body = {"model_name": model_name, "model_version": model_version,
                    "items": [{"prediction_id": int(i), "probability": float(p)} for i, p in items[start:start + 5000]]}
            stored += int(self._call("POST", "/v1/shadow/predictions", json=body)["stored"])
        return stored

    def shadow(self, model_version: str, after_prediction_id: int = 0, limit: int = 5000) -> list[dict[str, Any]]:
        """A shadow challenger's stored scores after ``after_prediction_id``, in prediction order (all pages)."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", "/v1/shadow/predictions", params={
                "model_version": model_version, "after_prediction_id": after_prediction_id, "limit": limit})
            items += page["items"]
            if len(page["items"]) < limit:
                return items
            after_prediction_id = int(page["next_after_prediction_id"])

    def post_results(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return int(self._call("POST", "/v1/monitoring", json={"results": [dict(r) for r in rows]})["stored"])

    def post_event(self, kind: str, detail: Mapping[str, Any], model_version: str | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/events", json={"kind": kind, "detail": dict(detail),
                                                           "model_version": model_version}))

    def monitor_state(self, name: str = "monitor") -> dict[str, Any]:
        """The monitor's saved state and its version (both None when none was saved yet)."""
        return dict(self._call("GET", "/v1/monitor/state", params={"name": name}))

    def save_monitor_state(self, state: Mapping[str, Any], version: int | None, *, name: str = "monitor",
                           results: Sequence[Mapping[str, Any]] = (),
                           events: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Save the state if it is still at ``version`` (else :class:`GatewayError` 409), with the step's
        results and events in the same transaction. Returns the new version."""
        body = {"version": version, "state": dict(state), "results": [dict(r) for r in results],
                "events": [dict(e) for e in events]}
        return dict(self._call("PUT", "/v1/monitor/state", params={"name": name}, json=body))

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
