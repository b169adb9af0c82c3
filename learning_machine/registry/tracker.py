"""Tracking and registry on an MLflow server, through ``MlflowClient`` only (no fluent global run state, but for
the length of one ``mlflow.models.evaluate`` call, which knows no other: :mod:`learning_machine.registry.evaluation`).

Every training run logs its parameters, the dataset as an input with its digest, the model as an MLflow 3
logged model (pipeline with preprocessing, signature, input example, dataset spec and drift reference; an
output of the run, with the run's parameters), its evaluation on the held-out rows through
``mlflow.models.evaluate`` (metrics overall and per subgroup, linked to the run, the logged model and the
held-out dataset) and evaluation plots. A registered version's source is its logged model
(``models:/<model_id>``); versions carry their metrics as tags; the aliases ``champion`` and ``challenger``
mark what serves and what waits. Each promotion records the champion it replaced, so a rollback is one call.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import yaml

from learning_machine.errors import (
    LearningMachineError,
    ModelNotFoundError,
    RegistryError,
    TrackingUnavailableError,
)
from learning_machine.registry.names import (
    CHALLENGER,
    CHAMPION,
    MODEL_ARTIFACT,
    PREVIOUS_TAG,
    PROMOTED_AT_TAG,
    PROMOTION_REASON_TAG,
    SPEC_FILE,
)
from learning_machine.registry.rest import ARTIFACTS_API, MlflowRest, tags_dict, tags_list
from learning_machine.settings import Settings

if TYPE_CHECKING:  # a pipeline step imports this module in a fresh interpreter: keep it light
    from learning_machine.data.sources import LoadedDataset
    from learning_machine.model.training import TrainingResult

T = TypeVar("T")


@dataclass
class VersionInfo:
    """One registered model version, as the CLI and the gateway show it."""

    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]
    created_at: float
    source: str
    status: str = "READY"
    model_id: str | None = None
    """The MLflow 3 logged model the version was registered from (None for versions registered from a run's
    artifacts, before logged models)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "aliases": self.aliases,
                "metrics": self.metrics, "tags": self.tags, "created_at": self.created_at, "source": self.source,
                "status": self.status, "model_id": self.model_id}


class Tracker:
    """The platform's view of one MLflow tracking server and its model registry."""

    def __init__(self, tracking_uri: str, *, timeout_s: float = 10.0) -> None:
        self.uri = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s
        # Runs, tags and the registry go over MLflow's REST API (:mod:`.rest`); MlflowClient, whose import
        # alone costs seconds, only where MLflow's own code is needed (models, datasets, downloads).
        self.rest = MlflowRest(self.uri, timeout_s=timeout_s)

    @functools.cached_property
    def client(self) -> Any:
        """MLflow's client of the same server, created on first use."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reachability ------------------------------------------------------------------------------
    def health(self) -> None:
        """Raise :class:`TrackingUnavailableError` unless the server answers ``/health``."""
        try:
            # On the REST client's connection, which the calls after it reuse.
            response = self.rest.http.get("/health", timeout=min(self.timeout_s, 5.0))
        except httpx.HTTPError as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server at {self.uri} is unreachable ({type(exc).__name__}); "
                "start it with `lm up` or set LM_MLFLOW_TRACKING_URI") from exc
        if response.status_code != 200:
            raise TrackingUnavailableError(
                f"MLflow tracking server at {self.uri} is unhealthy: HTTP {response.status_code}")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn MLflow and network failures into the platform's errors, naming what was being done."""
        from mlflow.exceptions import MlflowException, RestException

        try:
            yield
        except LearningMachineError:
            raise
        except RestException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFoundError(f"{what}: {exc.message}") from exc
            raise RegistryError(f"{what}: {exc.message}") from exc
        except MlflowException as exc:
            network = unreachable(exc)
            if network is not None:
                raise TrackingUnavailableError(
                    f"{what}: MLflow at {self.uri} is unreachable ({type(network).__name__})") from exc
            raise RegistryError(f"{what}: {exc.message}") from exc
        except (OSError, httpx.HTTPError) as exc:
            raise TrackingUnavailableError(f"{what}: MLflow at {self.uri} is unreachable ({exc})") from exc

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._errors(what):
            return fn()
        raise AssertionError("unreachable")  # pragma: no cover - the context manager re-raises

    # -- runs --------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of the experiment called ``name``, created when missing."""
        what = f"opening experiment {name!r}"
        try:
            found = self.rest.call(what, "GET", "experiments/get-by-name", params={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except ModelNotFoundError:
            pass
        try:
            return str(self.rest.call(what, "POST", "experiments/create", json={"name": name})["experiment_id"])
        except RegistryError:  # created meanwhile by another step or service
            found = self.rest.call(what, "GET", "experiments/get-by-name", params={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])

    def start_run(self, experiment: str, run_name: str, *, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None) -> str:
        """A new run (nested under ``parent_run_id`` when given); returns its id."""
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        exp = self.experiment_id(experiment)
        run = self.rest.call("starting a run", "POST", "runs/create", json={
            "experiment_id": exp, "run_name": run_name, "start_time": int(time.time() * 1000),
            "tags": tags_list(all_tags)})
        return str(run["run"]["info"]["run_id"])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.rest.call("ending a run", "POST", "runs/update",
                       json={"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)})

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [{"key": k, "value": str(v)[:6000]} for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.rest.call("logging parameters", "POST", "runs/log-batch",
                           json={"run_id": run_id, "params": items[i:i + 100]})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [{"key": k, "value": float(v), "timestamp": now, "step": step}
                 for k, v in metrics.items() if v == v and abs(float(v)) != float("inf")]  # JSON has no NaN or inf
        for i in range(0, len(items), 1000):
            self.rest.call("logging metrics", "POST", "runs/log-batch",
                           json={"run_id": run_id, "metrics": items[i:i + 1000]})

    def log_dataset(self, run_id: str, dataset: LoadedDataset, context: str = "training") -> str:
        """Record ``dataset`` as an MLflow input of the run; returns its digest."""
        from mlflow.data import pandas_dataset
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source = CodeDatasetSource(tags={"uri": dataset.source_uri, **{k: str(v) for k, v in dataset.params.items()}})
        mlds = pandas_dataset.from_pandas(dataset.frame, source=source, targets=dataset.spec.target.name,
                                       name=dataset.name, digest=dataset.digest)
        # Dataset.to_dict() is the public form of the dataset (name, digest, source, source type, schema, profile),
        # the fields of the tracking entity.
        entity = DatasetInput(Dataset(**mlds.to_dict()), tags=[InputTag("mlflow.data.context", context)])
        self._call("logging the dataset", lambda: self.client.log_inputs(run_id, datasets=[entity]))
        return dataset.digest

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        if not self._upload(run_id, artifact_file, text.encode()):
            self._call(f"logging {artifact_file}", lambda: self.client.log_text(run_id, text, artifact_file))

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        """Store ``data`` byte for byte as an artifact of the run (a digest taken before is the stored one's)."""
        if not self._upload(run_id, artifact_file, data):
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / Path(artifact_file).name
                local.write_bytes(data)
                folder = str(Path(artifact_file).parent)
                self._call(f"logging {artifact_file}", lambda: self.client.log_artifact(
                    run_id, str(local), None if folder == "." else folder))

    def _upload(self, run_id: str, artifact_file: str, data: bytes) -> bool:
        """PUT a small artifact through the server's artifact proxy (``--serve-artifacts``, how `lm up` and
        the chart run MLflow); False when the run's artifacts live elsewhere (then MlflowClient uploads)."""
        root = str(self._run(run_id)["info"].get("artifact_uri", ""))
        if not root.startswith("mlflow-artifacts:/") or root.startswith("mlflow-artifacts://"):
            return False
        path = f"{root[len('mlflow-artifacts:/'):].strip('/')}/{artifact_file.strip('/')}"
        self.rest.call(f"uploading {artifact_file}", "PUT", path, content=data, api=ARTIFACTS_API)
        return True

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.rest.call("tagging the run", "POST", "runs/set-tag", json={"run_id": run_id, "key": key, "value": value})

    def _run(self, run_id: str) -> dict[str, Any]:
        return dict(self.rest.call("reading the run", "GET", "runs/get", params={"run_id": run_id})["run"])

    def run_tags_and_params(self, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(tags, parameters) of a run."""
        data = self._run(run_id).get("data", {})
        return tags_dict(data.get("tags")), tags_dict(data.get("params"))

    def search_runs(self, experiment: str, filter_string: str, max_results: int = 100) -> list[str]:
        """Ids of the runs of ``experiment`` that match ``filter_string`` (MLflow's search syntax), newest first."""
        found = self.rest.call("searching runs", "POST", "runs/search", json={
            "experiment_ids": [self.experiment_id(experiment)], "filter": filter_string,
            "max_results": max_results, "order_by": ["attributes.start_time DESC"]})
        return [str(r["info"]["run_id"]) for r in found.get("runs", [])]

    def metric_history(self, run_id: str, key: str) -> list[float]:
        history = self.rest.call("reading metrics back", "GET", "metrics/get-history",
                                 params={"run_id": run_id, "metric_key": key})
        return [float(m["value"]) for m in history.get("metrics", [])]

    def artifact_names(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self._call("listing artifacts", lambda: self.client.list_artifacts(run_id, path))]

    def log_file(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        name = f"{artifact_path.strip('/')}/{local_file.name}" if artifact_path else local_file.name
        if not self._upload(run_id, name, local_file.read_bytes()):
            self._call("uploading an artifact", lambda: self.client.log_artifact(run_id, str(local_file),
                                                                                 artifact_path))

    def run_bytes(self, run_id: str, artifact_file: str) -> bytes | None:
        """An artifact of a run as stored, byte for byte; None when the run has no such artifact."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file, dst_path=tmp,
                                                           tracking_uri=self.uri)
            except Exception:  # noqa: BLE001 - MLflow raises several kinds for "not there"
                return None
            return Path(path).read_bytes()

    def run_json(self, run_id: str, artifact_file: str) -> Any:
        """A JSON artifact of a run, parsed; None when the run has no such artifact."""
        data = self.run_bytes(run_id, artifact_file)
        return json.loads(data) if data is not None else None

    def version_frame(self, info: VersionInfo, artifact_file: str) -> Any:
        """A parquet artifact stored beside a version's model (e.g. its training reference) as a
        DataFrame; None when the version has none (older versions)."""
        import mlflow.artifacts
        import pandas as pd

        root = self.download_uri(info.name, info.version)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=f"{root.rstrip('/')}/{artifact_file}",
                                                           dst_path=tmp, tracking_uri=self.uri)
            except Exception:  # noqa: BLE001 - older versions have no such artifact
                return None
            return pd.read_parquet(path)

    def load_run_model(self, run_id: str) -> Any:
        """The fitted pipeline a run logged (a candidate, before it is registered)."""
        import mlflow.sklearn

        model_id = self.run_model_id(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            if model_id is None:  # a run from before logged models: the model is among its artifacts
                path = self._call("downloading the candidate", lambda: self.client.download_artifacts(
                    run_id, MODEL_ARTIFACT, tmp))
            else:
                path = self._download(f"downloading the candidate {model_id}", self.logged_model_uri(model_id),
                                      Path(tmp))
            return mlflow.sklearn.load_model(str(path))

    def run_model_id(self, run_id: str) -> str | None:
        """The logged model a run produced (its last model output), or None (runs from before logged models)."""
        return _model_id_of(self._run(run_id))

    def logged_model_uri(self, model_id: str) -> str:
        """Where a logged model's files are (its artifact location)."""
        found = self.rest.call(f"reading logged model {model_id}", "GET", f"logged-models/{model_id}")
        return str(found["model"]["info"]["artifact_uri"])

    def download_uri(self, model_name: str, version: str) -> str:
        """Where a registered version's files are: its logged model's artifact location (or, for versions
        registered from a run's artifacts, that folder), as the registry resolves it."""
        found = self.rest.call(f"locating {model_name} v{version}", "GET", "model-versions/get-download-uri",
                               params={"name": model_name, "version": version})
        return str(found["artifact_uri"])

    def _download(self, what: str, artifact_uri: str, dst: Path) -> Path:
        import mlflow.artifacts

        return Path(self._call(what, lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.uri)))

    def log_dir(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call("uploading artifacts", lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path))

    def log_training(self, result: TrainingResult, dataset: LoadedDataset, *, experiment: str, run_name: str,
                     tags: dict[str, str] | None = None, parent_run_id: str | None = None,
                     progress: Callable[[str], None] | None = None) -> str:
        """One complete training run; it is marked FAILED (and nothing registered) if any part fails.

        The model becomes a logged model of the run (:meth:`log_model`) and is evaluated on the held-out rows
        with ``mlflow.models.evaluate``, linked to that model and to the held-out dataset; ``result.evaluation``
        becomes that evaluation (the same numbers as the training's own, plus calibration slope and intercept)."""
        run_id = self.start_run(experiment, run_name, parent_run_id=parent_run_id,
                                tags={"lm.kind": result.kind, "lm.dataset": dataset.name, "lm.mode": result.mode,
                                      **(tags or {})})
        model_id: str | None = None
        try:
            if progress:
                progress(f"logging run {run_id} to {self.uri}")
            params = {"model_kind": result.kind, "training_mode": result.mode, "dataset": dataset.name,
                      "dataset_digest": dataset.digest, "dataset_source": dataset.source_uri,
                      "train_rows": len(result.train), "test_rows": len(result.test),
                      **{f"model.{k}": v for k, v in result.params.items()},
                      **{f"data.{k}": v for k, v in dataset.params.items()}}
            self.log_params(run_id, params)
            self.log_dataset(run_id, dataset)
            with tempfile.TemporaryDirectory() as tmp:
                model_id = self.log_model(run_id, experiment, result, dataset, Path(tmp) / MODEL_ARTIFACT,
                                          params=params)
                result.evaluation = self.evaluate(
                    run_id, result.test_labels, result.test_proba, dataset.spec.subgroup_labels(result.test),
                    model_id=model_id, dataset_name=f"{dataset.name}-held-out")
                self.log_metrics(run_id, {"training_seconds": result.seconds})
                self._write_evaluation(result, Path(tmp) / "evaluation")
                self.log_dir(run_id, Path(tmp) / "evaluation", "evaluation")
        except BaseException:
            try:
                if model_id is not None:
                    self._call("marking the logged model failed",
                               lambda: self.client.finalize_logged_model(model_id, "FAILED"))
                self.end_run(run_id, "FAILED")
            except LearningMachineError:
                pass  # the server is gone; the run stays RUNNING there and is never registered
            raise
        self.end_run(run_id)
        return run_id

    def evaluate(self, run_id: str, labels: Any, proba: Any, subgroups: dict[str, Any] | None = None, *,
                 model_id: str | None = None, dataset_name: str = "held-out", prefix: str = "") -> Any:
        """Score predicted probabilities with ``mlflow.models.evaluate`` into the run ``run_id`` (metric names
        after ``prefix``), linked to the logged model ``model_id`` and the scored rows; returns the
        :class:`~learning_machine.model.evaluation.Evaluation` (see :mod:`learning_machine.registry.evaluation`)."""
        from learning_machine.registry.evaluation import evaluate_predictions

        with self._errors(f"evaluating on {dataset_name}"):
            return evaluate_predictions(self.uri, run_id, labels=labels, proba=proba, subgroups=subgroups,
                                        model_id=model_id, dataset_name=dataset_name, prefix=prefix)

    def log_model(self, run_id: str, experiment: str, result: TrainingResult, dataset: LoadedDataset, folder: Path,
                  *, params: dict[str, Any] | None = None) -> str:
        """Log the fitted pipeline as an MLflow 3 logged model, an output of the run with the run's parameters,
        and return its id. Its files (written to ``folder`` first): the sklearn flavour (cloudpickle, signature,
        input example), the dataset spec and the training reference the drift detector and the anchors
        explainer are fitted on."""
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        what = "logging the model"
        created = self._call(what, lambda: self.client.create_logged_model(
            experiment_id=self.experiment_id(experiment), name=MODEL_ARTIFACT, source_run_id=run_id,
            params={k: str(v)[:6000] for k, v in (params or {}).items()}, model_type="classifier",
            tags={"lm.kind": result.kind, "lm.mode": result.mode, "lm.dataset": dataset.name,
                  "lm.dataset_digest": dataset.digest}))
        model_id = str(created.model_id)
        try:
            self._call(what, lambda: self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)]))
            # The MLmodel file names the logged model (as mlflow.<flavor>.log_model writes it).
            self._write_model(result, dataset, folder, Model(artifact_path=created.artifact_location,
                                                             model_uuid=model_id, run_id=run_id, model_id=model_id))
            self._call(what, lambda: self.client.log_model_artifacts(model_id, str(folder)))
            self._call(what, lambda: self.client.finalize_logged_model(model_id, "READY"))
        except BaseException:
            try:
                self._call("marking the logged model failed",
                           lambda: self.client.finalize_logged_model(model_id, "FAILED"))
            except LearningMachineError:
                pass
            raise
        return model_id

    @staticmethod
    def _write_evaluation(result: TrainingResult, folder: Path) -> None:
        import matplotlib.pyplot as plt

        from learning_machine.model.evaluation import evaluation_figures

        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps(result.evaluation.as_dict(), indent=2))
        result.importance.rename("importance").to_csv(folder / "feature_importance.csv", index_label="feature")
        for name, fig in evaluation_figures(result.test_labels, result.test_proba, result.evaluation, result.importance).items():
            fig.savefig(folder / name, dpi=90, bbox_inches="tight")
            plt.close(fig)

    @staticmethod
    def _write_model(result: TrainingResult, dataset: LoadedDataset, folder: Path, mlflow_model: Any = None) -> None:
        import mlflow.sklearn
        import sklearn
        from mlflow.models import infer_signature

        from learning_machine.model.features import feature_frame

        X = feature_frame(dataset.spec, result.test)
        example = X.dropna().head(5) if len(X.dropna()) else X.head(5)
        proba = result.pipeline.predict_proba(example)
        requirements = [f"scikit-learn=={sklearn.__version__}"]
        if result.kind == "xgboost":
            import xgboost

            requirements.append(f"xgboost=={xgboost.__version__}")
        # cloudpickle, not skops: skops would need every xgboost type declared trusted; the artifact only
        # ever comes from our own registry.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column hint; our columns are floats
            mlflow.sklearn.save_model(
                result.pipeline, str(folder), mlflow_model=mlflow_model, serialization_format="cloudpickle",
                signature=infer_signature(example, proba), input_example=example, pip_requirements=requirements,
                metadata={"dataset": dataset.name, "dataset_digest": dataset.digest, "kind": result.kind})
        (folder / SPEC_FILE).write_text(yaml.safe_dump(dataset.spec.model_dump(mode="json"), sort_keys=False))
        # The training reference travels with the version: the drift detector and the anchors explainer
        # of whatever serves this version are fitted on it.
        from learning_machine.model.drift import write_reference

        write_reference(dataset.spec, feature_frame(dataset.spec, result.train), folder)

    # -- registry ----------------------------------------------------------------------------------
    def register(self, model_name: str, run_id: str, *, metrics: dict[str, float] | None = None,
                 tags: dict[str, str] | None = None, alias: str | None = CHALLENGER,
                 then: Callable[[VersionInfo], object] | None = None) -> VersionInfo:
        """Register the run's model as a new version tagged with its metrics, call ``then`` with it (e.g. write its
        change record), and give it ``alias``. On any failure (``then``'s too) the half-made version is deleted, so
        the registry never shows it."""
        try:
            self.rest.call(f"reading registered model {model_name!r}", "GET", "registered-models/get",
                           params={"name": model_name})
        except ModelNotFoundError:
            try:
                self.rest.call(f"creating registered model {model_name!r}", "POST", "registered-models/create",
                               json={"name": model_name, "description": "Learning Machine risk model"})
            except RegistryError:
                pass  # created meanwhile: the version below will say if it really is not there
        run = self._run(run_id)
        info = run["info"]
        if info["status"] != "FINISHED":
            raise RegistryError(f"run {run_id} is {info['status']}; only finished runs are registered")
        model_id = _model_id_of(run)
        # The version points at the run's logged model (MLflow 3); a run from before logged models has its
        # model among its artifacts.
        source = f"models:/{model_id}" if model_id else f"{info['artifact_uri']}/{MODEL_ARTIFACT}"
        created = self.rest.call("registering a version", "POST", "model-versions/create", json={
            "name": model_name, "source": source, "run_id": run_id, **({"model_id": model_id} if model_id else {}),
            "tags": tags_list({"lm.run_id": run_id})})
        number = str(created["model_version"]["version"])
        try:
            self._wait_ready(model_name, number)
            all_tags = {**{f"metric.{k}": f"{v:.6g}" for k, v in (metrics or {}).items() if "." not in k},
                        **(tags or {})}
            for key, value in all_tags.items():
                self._version_tag(model_name, number, key, value)
            if then is not None:
                then(self.version(model_name, number))
            if alias:
                self._set_alias(model_name, alias, number)
        except BaseException:
            try:
                self.rest.call("removing the half-registered version", "DELETE", "model-versions/delete",
                               json={"name": model_name, "version": number})
            except LearningMachineError:
                pass  # best effort cleanup, the original error is what matters
            raise
        return self.version(model_name, number)

    def _wait_ready(self, model_name: str, number: str, timeout_s: float = 300.0) -> None:
        """A new version is READY at once on the stores we use; others copy the files first."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._model_version(model_name, number).get("status", "READY")
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(f"{model_name} v{number} did not become ready ({status})")
            time.sleep(0.5)

    def _model_version(self, model_name: str, number: str) -> dict[str, Any]:
        return dict(self.rest.call(f"looking up {model_name} v{number}", "GET", "model-versions/get",
                                   params={"name": model_name, "version": number})["model_version"])

    def _version_tag(self, model_name: str, number: str, key: str, value: str) -> None:
        self.rest.call("tagging the version", "POST", "model-versions/set-tag",
                       json={"name": model_name, "version": number, "key": key, "value": value})

    def tag_version(self, model_name: str, version: str, tags: dict[str, str]) -> VersionInfo:
        """Set tags on a version (a number or an alias); returns the version as it is now."""
        number = self.version(model_name, version).version
        for key, value in tags.items():
            self._version_tag(model_name, number, key, value[:5000])
        return self.version(model_name, number)

    def _set_alias(self, model_name: str, alias: str, number: str) -> None:
        self.rest.call(f"setting {alias}", "POST", "registered-models/alias",
                       json={"name": model_name, "alias": alias, "version": number})

    def version(self, model_name: str, ref: str) -> VersionInfo:
        """A version by number or alias (``champion``, ``challenger``)."""
        try:
            if ref.isdigit():
                mv = self._model_version(model_name, ref)
            else:
                mv = self.rest.call(f"looking up {model_name}@{ref}", "GET", "registered-models/alias",
                                    params={"name": model_name, "alias": ref})["model_version"]
        except (ModelNotFoundError, RegistryError) as exc:
            raise ModelNotFoundError(f"model {model_name!r} has no version {ref!r}") from exc
        return _info(mv)

    def alias_version(self, model_name: str, alias: str) -> VersionInfo | None:
        """The version an alias points to, or None when the alias (or the model) does not exist."""
        try:
            return self.version(model_name, alias)
        except ModelNotFoundError:
            return None

    def list_versions(self, model_name: str) -> list[VersionInfo]:
        """All versions of a model, newest first, with their aliases."""
        what = f"listing versions of {model_name!r}"
        try:
            model = self.rest.call(what, "GET", "registered-models/get", params={"name": model_name})
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"no registered model called {model_name!r}") from exc
        aliases: dict[str, list[str]] = {}
        for item in model["registered_model"].get("aliases", []):
            aliases.setdefault(str(item["version"]), []).append(str(item["alias"]))
        versions: list[dict[str, Any]] = []
        token = None
        while True:
            page = self.rest.call(what, "GET", "model-versions/search", params={
                "filter": f"name='{model_name}'", "max_results": 1000, **({"page_token": token} if token else {})})
            versions += page.get("model_versions", [])
            token = page.get("next_page_token")
            if not token:
                break
        infos = [_info(v, aliases.get(str(v["version"]), [])) for v in versions]
        return sorted(infos, key=lambda i: int(i.version), reverse=True)

    def registered_models(self) -> list[str]:
        found = self.rest.call("listing models", "GET", "registered-models/search", params={"max_results": 1000})
        return [str(m["name"]) for m in found.get("registered_models", [])]

    def promote(self, model_name: str, version: str, *, reason: str = "manual") -> VersionInfo:
        """Point ``champion`` at ``version``; remember the champion it replaces for rollback."""
        target = self.version(model_name, version)
        current = self.alias_version(model_name, CHAMPION)
        if current is not None and current.version == target.version:
            return target
        if current is not None:
            self._version_tag(model_name, target.version, PREVIOUS_TAG, current.version)
        self._version_tag(model_name, target.version, PROMOTED_AT_TAG, f"{time.time():.0f}")
        self._version_tag(model_name, target.version, PROMOTION_REASON_TAG, reason[:500])
        self._set_alias(model_name, CHAMPION, target.version)
        if CHALLENGER in target.aliases:
            self.rest.call("clearing challenger", "DELETE", "registered-models/alias",
                           json={"name": model_name, "alias": CHALLENGER})
        return self.version(model_name, target.version)

    def rollback_target(self, model_name: str, to_version: str | None = None) -> tuple[VersionInfo, VersionInfo]:
        """What a rollback would do, without doing it: (the champion, the version it would go back to)."""
        current = self.alias_version(model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"model {model_name!r} has no champion to roll back")
        target = to_version or current.tags.get(PREVIOUS_TAG)
        if not target:
            raise RegistryError(f"champion v{current.version} of {model_name!r} replaced no earlier version; "
                                "name one with --to VERSION")
        if target == current.version:
            raise RegistryError(f"v{target} is already the champion")
        return current, self.version(model_name, target)

    def rollback(self, model_name: str, to_version: str | None = None) -> tuple[VersionInfo, VersionInfo]:
        """Point ``champion`` back at the version it replaced (or at ``to_version``).
        Returns (old champion, new champion)."""
        current, target_info = self.rollback_target(model_name, to_version)
        target = target_info.version
        # A rollback is not a promotion: the version keeps the predecessor it had, so rolling back
        # repeatedly walks further back through the history.
        self._set_alias(model_name, CHAMPION, target)
        self._version_tag(model_name, current.version, "lm.rolled_back_at", f"{time.time():.0f}")
        return current, self.version(model_name, target)

    def download_model(self, model_name: str, ref: str, dst: Path) -> tuple[Path, VersionInfo]:
        """Download a version's model folder (pipeline + spec + drift reference) into ``dst``: its logged
        model's files, or the run's ``model`` folder for versions registered before logged models."""
        info = self.version(model_name, ref)
        path = self._download(f"downloading {model_name} v{info.version}",
                              self.download_uri(model_name, info.version), dst)
        return path, info

    def load_pipeline(self, model_name: str, ref: str = CHAMPION) -> tuple[Any, VersionInfo]:
        """The fitted pipeline of a version (by number or alias) and its registry info."""
        import mlflow.sklearn

        with tempfile.TemporaryDirectory() as tmp:
            path, info = self.download_model(model_name, ref, Path(tmp))
            return mlflow.sklearn.load_model(str(path)), info


def _info(mv: dict[str, Any], aliases: list[str] | None = None) -> VersionInfo:
    """A model version as MLflow's REST API returns it."""
    tags = tags_dict(mv.get("tags"))
    metrics = {k[len("metric."):]: float(v) for k, v in tags.items() if k.startswith("metric.")}
    return VersionInfo(
        name=str(mv["name"]), version=str(mv["version"]), run_id=mv.get("run_id") or None,
        aliases=sorted(aliases if aliases is not None else [str(a) for a in mv.get("aliases", []) or []]),
        metrics=metrics, tags={k: v for k, v in tags.items() if not k.startswith("metric.")},
        created_at=int(mv.get("creation_timestamp") or 0) / 1000, source=str(mv.get("source", "")),
        status=str(mv.get("status", "READY")), model_id=mv.get("model_id") or _logged_model_in(str(mv.get("source", ""))))


def _logged_model_in(source: str) -> str | None:
    """The logged model a version's source names (``models:/<model_id>``; MLflow's REST API does not return
    a version's model id itself), or None for a source in a run's artifacts."""
    rest = source[len("models:/"):] if source.startswith("models:/") else ""
    return rest if rest and "/" not in rest and "@" not in rest else None


def _model_id_of(run: dict[str, Any]) -> str | None:
    """The logged model a run (as MLflow's REST API returns it) produced last, or None."""
    outputs = (run.get("outputs") or {}).get("model_outputs") or []
    if not outputs:
        return None
    return str(max(outputs, key=lambda o: int(o.get("step", 0) or 0))["model_id"])


def tracker_for(settings: Settings) -> Tracker:
    """The tracker of the server the settings name, with their request timeout."""
    return Tracker(settings.tracking_uri, timeout_s=settings.request_timeout_s)


def unreachable(exc: BaseException) -> BaseException | None:
    """The network error behind ``exc`` when MLflow's client could not reach the server, else None: a refused
    or dropped connection, a timeout or retries run out (``requests``' errors, which MLflow's client raises
    from and wraps in an ``MlflowException``), found in the exception's ``__cause__``/``__context__`` chain;
    or the server saying it is temporarily unavailable."""
    import requests  # MLflow's HTTP client

    network = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError, ConnectionError,
               TimeoutError, httpx.TransportError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, network):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    if getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
        return exc
    return None
