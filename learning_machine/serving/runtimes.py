"""MLServer runtimes of the Learning Machine: thin adapters from the V2 protocol to the plain functions in
``learning_machine.model.inference``, ``learning_machine.model.explain`` and ``learning_machine.model.drift``.

Each runtime loads ``parameters.uri`` (``models:/<name>/<version>`` or ``models:/<name>@<alias>``) from the
MLflow server named by ``parameters.extra.tracking_uri`` (else ``MLFLOW_TRACKING_URI``). Loading runs in a
thread, so a reload through the repository API never stalls requests to the version still serving.
Responses carry ``model_version`` = the registered MLflow version that answered.

* :class:`ModelRuntime`: outputs ``label`` (INT64) and ``probability`` (FP64), shape ``[n, 1]``.
* :class:`ExplainerRuntime`: accepts alibi-explain's ``extra`` keys (``explainer_type``, ``infer_uri``,
  ``init_parameters``, ``explain_parameters``); request ``parameters.explain_parameters.method`` picks
  ``exact`` or ``anchors``; output ``explanation``: one BYTES element, a JSON string.
* :class:`DriftRuntime`: accepts alibi-detect's ``extra`` keys (``batch_size``, ``predict_parameters``,
  plus ``detector_type``, ``p_val``); outputs one tensor per key of the detector's ``data`` dict.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    ResponseOutput,
)

from learning_machine.clients.v2 import (
    EXPLAIN_PARAMETERS,
    EXPLANATION_OUTPUT,
    LABEL_OUTPUT,
    PROBABILITY_OUTPUT,
    RECORD_IDS_PARAMETER,
)
from learning_machine.errors import LearningMachineError
from learning_machine.model.inference import Columns, Predictor, request_columns
from learning_machine.registry.bundle import ServedVersion, env_tracking_uri, load_version


class _BadRequest(MLServerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


class _Base(MLModel):
    """Shared loading and request decoding."""

    _served: ServedVersion

    def _extra(self) -> dict[str, Any]:
        params = self.settings.parameters
        extra = (params.extra if params is not None else None) or {}
        return dict(extra)

    def _load_version(self) -> ServedVersion:
        params = self.settings.parameters
        uri = params.uri if params is not None else None
        if not uri:
            raise MLServerError(f"model {self.name}: parameters.uri (models:/<name>/<version>) is not set")
        tracking_uri = self._extra().get("tracking_uri") or env_tracking_uri()
        if not tracking_uri:
            raise MLServerError(f"model {self.name}: no MLflow server (extra.tracking_uri or MLFLOW_TRACKING_URI)")
        return load_version(str(tracking_uri), str(uri))

    def _columns(self, payload: InferenceRequest) -> Columns:
        inputs = [{"name": i.name, "datatype": str(i.datatype.value if hasattr(i.datatype, "value") else i.datatype),
                   "data": i.data.root if hasattr(i.data, "root") else i.data,
                   "parameters": i.parameters.model_dump(exclude_none=True) if i.parameters else None}
                  for i in payload.inputs]
        try:
            return request_columns(self._served.spec, inputs)
        except (ValueError, TypeError) as exc:
            raise _BadRequest(f"model {self.name}: cannot decode the request inputs: {exc}") from exc

    async def metadata(self) -> MetadataModelResponse:
        meta = await super().metadata()
        served = getattr(self, "_served", None)
        if served is not None:
            meta.versions = [served.version]
            meta.platform = f"learning-machine/{served.kind}"
            if not meta.inputs:
                meta.inputs = [MetadataTensor(name=f.name, datatype="BYTES" if f.type == "categorical" else "FP64",
                                              shape=[-1, 1]) for f in served.spec.features]
        return meta

    def _response(self, payload: InferenceRequest, outputs: list[ResponseOutput],
                  parameters: dict[str, Any] | None = None) -> InferenceResponse:
        return InferenceResponse(id=payload.id, model_name=self.name, model_version=self._served.version,
                                 parameters=Parameters(**(parameters or {})), outputs=outputs)


def _record_ids(payload: InferenceRequest) -> list[Any] | None:
    if payload.parameters is None:
        return None
    ids = getattr(payload.parameters, RECORD_IDS_PARAMETER, None)
    return list(ids) if isinstance(ids, list) else None


class ModelRuntime(_Base):
    """The model: class and event probability per row, from the version's own preprocessing + model."""

    async def load(self) -> bool:
        self._served = await asyncio.to_thread(self._load_version)
        self._predictor = Predictor.build(self._served.pipeline, self._served.spec, self._served.reference)
        return True

    async def metadata(self) -> MetadataModelResponse:
        meta = await super().metadata()
        if not meta.outputs:
            meta.outputs = [MetadataTensor(name=LABEL_OUTPUT, datatype="INT64", shape=[-1, 1]),
                            MetadataTensor(name=PROBABILITY_OUTPUT, datatype="FP64", shape=[-1, 1])]
        return meta

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        columns = self._columns(payload)
        try:
            labels, proba = self._predictor.predict(columns)
        except (ValueError, TypeError) as exc:
            raise InferenceError(f"model {self.name} v{self._served.version} cannot predict: {exc}") from exc
        n = len(labels)
        params: dict[str, Any] = {}
        ids = _record_ids(payload)
        if ids is not None:
            params[RECORD_IDS_PARAMETER] = ids
        return self._response(payload, [
            ResponseOutput(name=LABEL_OUTPUT, shape=[n, 1], datatype="INT64", data=labels.tolist()),
            ResponseOutput(name=PROBABILITY_OUTPUT, shape=[n, 1], datatype="FP64", data=proba.tolist()),
        ], params)


class ExplainerRuntime(_Base):
    """Explanations of single predictions (exact attributions, anchors), alibi-explain compatible."""

    async def load(self) -> bool:
        from learning_machine.model.explain import Explainer, method_for

        extra = self._extra()
        self._default_method = method_for(str(extra.get("explainer_type") or "anchor_tabular"))
        self._explain_defaults = dict(extra.get("explain_parameters") or {})
        self._served = await asyncio.to_thread(self._load_version)
        if self._served.reference is None:
            raise MLServerError(f"model {self._served.name} v{self._served.version} has no training reference; "
                                "retrain it to serve explanations")
        init = dict(extra.get("init_parameters") or {})
        self._explainer = Explainer(self._served.pipeline, self._served.spec, self._served.reference,
                                    model_version=self._served.version, anchor_options=init)
        # AnchorTabular keeps sampling state on the instance: one anchors search at a time.
        self._anchor_lock = threading.Lock()
        # Fit the anchors explainer now (a few seconds), not on the first clinician's request.
        await asyncio.to_thread(self._explainer._anchor_explainer)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        from learning_machine.model.explain import to_json

        options = dict(self._explain_defaults)
        if payload.parameters is not None:
            options.update(getattr(payload.parameters, EXPLAIN_PARAMETERS, None) or {})
        method = str(options.pop("method", self._default_method))
        columns = self._columns(payload)
        try:
            if method == "anchors":
                # Anchors takes ~0.1-1 s: off the event loop, so predictions keep flowing meanwhile.
                explanation = await asyncio.to_thread(self._anchors, columns, options)
            else:
                explanation = self._explainer.explain(columns, method, **options)
        except LearningMachineError as exc:
            raise _BadRequest(f"explainer {self.name}: {exc.message}") from exc
        except TypeError as exc:
            raise _BadRequest(f"explainer {self.name}: bad explain_parameters: {exc}") from exc
        return self._response(payload, [ResponseOutput(
            name=EXPLANATION_OUTPUT, shape=[1, 1], datatype="BYTES", data=[to_json(explanation)],
            parameters=Parameters(content_type="str"))], {"content_type": "str"})


    def _anchors(self, columns: Any, options: dict[str, Any]) -> dict[str, Any]:
        with self._anchor_lock:
            return self._explainer.explain(columns, "anchors", **options)


class DriftRuntime(_Base):
    """Data drift of a batch against the version's training reference, alibi-detect compatible."""

    async def load(self) -> bool:
        from learning_machine.model.drift_detector import fit_detector

        extra = self._extra()
        self._served = await asyncio.to_thread(self._load_version)
        if self._served.reference is None:
            raise MLServerError(f"model {self._served.name} v{self._served.version} has no training reference; "
                                "retrain it to serve a drift detector")
        self._detector = await asyncio.to_thread(
            fit_detector, self._served.spec, self._served.reference,
            detector_type=str(extra.get("detector_type") or "TabularDrift"), p_val=float(extra.get("p_val") or 0.05))
        self._predict_parameters = dict(extra.get("predict_parameters") or {})
        batch = extra.get("batch_size")
        # batch_size (as in alibi-detect's runtime): test a rolling window of the last batch_size rows.
        self._window: deque[dict[str, Any]] | None = deque(maxlen=int(batch)) if batch else None
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        import pandas as pd

        from learning_machine.model.drift_detector import detect
        from learning_machine.model.inference import columns_frame

        frame = columns_frame(self._served.spec, self._columns(payload))
        if self._window is not None:
            self._window.extend(frame.to_dict("records"))
            if len(self._window) < (self._window.maxlen or 0):
                return self._response(payload, [
                    _tensor("is_drift", [0]), _tensor("window_rows", [len(self._window)])])
            frame = pd.DataFrame(list(self._window))
        try:
            result = detect(self._detector, frame, **self._predict_parameters)
        except LearningMachineError as exc:
            raise _BadRequest(f"drift detector {self.name}: {exc.message}") from exc
        return self._response(payload, [_tensor(k, v) for k, v in result.items() if v is not None])


def _tensor(name: str, value: Any) -> ResponseOutput:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, str) for v in values) and values:
        return ResponseOutput(name=name, shape=[len(values)], datatype="BYTES", data=values,
                              parameters=Parameters(content_type="str"))
    if not values:
        return ResponseOutput(name=name, shape=[0], datatype="BYTES", data=[], parameters=Parameters(content_type="str"))
    array = np.asarray(values)
    if array.dtype.kind in "biu":
        return ResponseOutput(name=name, shape=[len(values)], datatype="INT64", data=array.astype(np.int64).tolist())
    return ResponseOutput(name=name, shape=[len(values)], datatype="FP64", data=array.astype(float).tolist())
