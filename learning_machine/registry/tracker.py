"""Tracking and registry on an MLflow server, through ``MlflowClient`` only (no fluent global run state).

Every training run logs its parameters, metrics (overall and per subgroup), the dataset as an input
with its digest, evaluation plots and the model (pipeline with preprocessing, signature, input example).
Registered versions carry their metrics as tags; the aliases ``champion`` and ``challenger`` mark what
serves and what waits. Each promotion records the champion it replaced, so a rollback is one call.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
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
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "aliases": self.aliases,
                "metrics": self.metrics, "tags": self.tags, "created_at": self.created_at, "source": self.source,
                "status": self.status}


class Tracker:
    """The platform's view of one MLflow tracking server and its model registry."""

    def __init__(self, tracking_uri: str, *, timeout_s: float = 10.0) -> None:
        from mlflow import MlflowClient

        self.uri = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reachability ------------------------------------------------------------------------------
    def health(self) -> None:
        """Raise :class:`TrackingUnavailableError` unless the server answers ``/health``."""
        try:
            response = httpx.get(f"{self.uri}/health", timeout=min(self.timeout_s, 5.0))
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
            if "API request" in str(exc) or "Max retries" in str(exc) or "Connection" in str(exc):
                raise TrackingUnavailableError(f"{what}: MLflow at {self.uri} is unreachable") from exc
            raise RegistryError(f"{what}: {exc}") from exc
        except (OSError, httpx.HTTPError) as exc:
            raise TrackingUnavailableError(f"{what}: MLflow at {self.uri} is unreachable ({exc})") from exc

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._errors(what):
            return fn()
        raise AssertionError("unreachable")  # pragma: no cover - the context manager re-raises

    # -- runs --------------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of the experiment called ``name``, created when missing."""
        def get() -> str:
            found = self.client.get_experiment_by_name(name)
            return found.experiment_id if found else self.client.create_experiment(name)
        return self._call(f"opening experiment {name!r}", get)

    def start_run(self, experiment: str, run_name: str, *, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None) -> str:
        """A new run (nested under ``parent_run_id`` when given); returns its id."""
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        exp = self.experiment_id(experiment)
        run = self._call("starting a run", lambda: self.client.create_run(exp, run_name=run_name, tags=all_tags))
        return str(run.info.run_id)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("ending a run", lambda: self.client.set_terminated(run_id, status=status))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("logging parameters", partial(self.client.log_batch, run_id, params=items[i:i + 100]))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v]  # drop NaN
        for i in range(0, len(items), 1000):
            self._call("logging metrics", partial(self.client.log_batch, run_id, metrics=items[i:i + 1000]))

    def log_dataset(self, run_id: str, dataset: LoadedDataset, context: str = "training") -> str:
        """Record ``dataset`` as an MLflow input of the run; returns its digest."""
        from mlflow.data import pandas_dataset
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        source = CodeDatasetSource(tags={"uri": dataset.source_uri, **{k: str(v) for k, v in dataset.params.items()}})
        mlds = pandas_dataset.from_pandas(dataset.frame, source=source, targets=dataset.spec.target.name,
                                       name=dataset.name, digest=dataset.digest)
        entity = DatasetInput(mlds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self._call("logging the dataset", lambda: self.client.log_inputs(run_id, datasets=[entity]))
        return dataset.digest

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._call(f"logging {artifact_file}", lambda: self.client.log_text(run_id, text, artifact_file))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call("tagging the run", lambda: self.client.set_tag(run_id, key, value))

    def run_tags_and_params(self, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(tags, parameters) of a run."""
        run = self._call("reading the run", lambda: self.client.get_run(run_id))
        return dict(run.data.tags), dict(run.data.params)

    def metric_history(self, run_id: str, key: str) -> list[float]:
        history = self._call("reading metrics back", lambda: self.client.get_metric_history(run_id, key))
        return [float(m.value) for m in history]

    def artifact_names(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self._call("listing artifacts", lambda: self.client.list_artifacts(run_id, path))]

    def log_file(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self._call("uploading an artifact", lambda: self.client.log_artifact(run_id, str(local_file), artifact_path))

    def run_json(self, run_id: str, artifact_file: str) -> Any:
        """A JSON artifact of a run, parsed; None when the run has no such artifact."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file, dst_path=tmp,
                                                           tracking_uri=self.uri)
            except Exception:  # noqa: BLE001 - MLflow raises several kinds for "not there"
                return None
            return json.loads(Path(path).read_text())

    def version_frame(self, info: VersionInfo, artifact_file: str) -> Any:
        """A parquet artifact stored beside a version's model (e.g. its training reference) as a
        DataFrame; None when the version has none (older versions)."""
        import mlflow.artifacts
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(artifact_uri=f"{info.source}/{artifact_file}",
                                                           dst_path=tmp, tracking_uri=self.uri)
            except Exception:  # noqa: BLE001 - older versions have no such artifact
                return None
            return pd.read_parquet(path)

    def load_run_model(self, run_id: str) -> Any:
        """The fitted pipeline a run logged (a candidate, before it is registered)."""
        import mlflow.sklearn

        with tempfile.TemporaryDirectory() as tmp:
            path = self._call("downloading the candidate", lambda: self.client.download_artifacts(
                run_id, MODEL_ARTIFACT, tmp))
            return mlflow.sklearn.load_model(path)

    def log_dir(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call("uploading artifacts", lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path))

    def log_training(self, result: TrainingResult, dataset: LoadedDataset, *, experiment: str, run_name: str,
                     tags: dict[str, str] | None = None, parent_run_id: str | None = None,
                     progress: Callable[[str], None] | None = None) -> str:
        """One complete training run; it is marked FAILED (and nothing registered) if any part fails."""
        run_id = self.start_run(experiment, run_name, parent_run_id=parent_run_id,
                                tags={"lm.kind": result.kind, "lm.dataset": dataset.name, "lm.mode": result.mode,
                                      **(tags or {})})
        try:
            if progress:
                progress(f"logging run {run_id} to {self.uri}")
            self.log_params(run_id, {
                "model_kind": result.kind, "training_mode": result.mode, "dataset": dataset.name,
                "dataset_digest": dataset.digest, "dataset_source": dataset.source_uri,
                "train_rows": len(result.train), "test_rows": len(result.test),
                **{f"model.{k}": v for k, v in result.params.items()},
                **{f"data.{k}": v for k, v in dataset.params.items()},
            })
            self.log_metrics(run_id, {**result.evaluation.flat(), "training_seconds": result.seconds})
            self.log_dataset(run_id, dataset)
            with tempfile.TemporaryDirectory() as tmp:
                self._write_evaluation(result, Path(tmp) / "evaluation")
                self.log_dir(run_id, Path(tmp) / "evaluation", "evaluation")
                self._write_model(result, dataset, Path(tmp) / MODEL_ARTIFACT)
                self.log_dir(run_id, Path(tmp) / MODEL_ARTIFACT, MODEL_ARTIFACT)
        except BaseException:
            try:
                self.end_run(run_id, "FAILED")
            except LearningMachineError:
                pass  # the server is gone; the run stays RUNNING there and is never registered
            raise
        self.end_run(run_id)
        return run_id

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
    def _write_model(result: TrainingResult, dataset: LoadedDataset, folder: Path) -> None:
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
                result.pipeline, str(folder), serialization_format="cloudpickle",
                signature=infer_signature(example, proba), input_example=example, pip_requirements=requirements,
                metadata={"dataset": dataset.name, "dataset_digest": dataset.digest, "kind": result.kind})
        (folder / SPEC_FILE).write_text(yaml.safe_dump(dataset.spec.model_dump(mode="json"), sort_keys=False))
        # The training reference travels with the version: the drift detector and the anchors explainer
        # of whatever serves this version are fitted on it.
        from learning_machine.model.drift import write_reference

        write_reference(dataset.spec, feature_frame(dataset.spec, result.train), folder)

    # -- registry ----------------------------------------------------------------------------------
    def register(self, model_name: str, run_id: str, *, metrics: dict[str, float] | None = None,
                 tags: dict[str, str] | None = None, alias: str | None = CHALLENGER) -> VersionInfo:
        """Register the run's model as a new version tagged with its metrics, and give it ``alias``.
        On any failure the half-made version is deleted, so the registry never shows it."""
        from mlflow.exceptions import MlflowException

        def ensure_model() -> None:
            try:
                self.client.get_registered_model(model_name)
            except MlflowException:
                self.client.create_registered_model(model_name, description="Learning Machine risk model")

        self._call(f"creating registered model {model_name!r}", ensure_model)
        run = self._call("reading the run", lambda: self.client.get_run(run_id))
        if run.info.status != "FINISHED":
            raise RegistryError(f"run {run_id} is {run.info.status}; only finished runs are registered")
        source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT}"
        version = self._call("registering a version", lambda: self.client.create_model_version(
            model_name, source=source, run_id=run_id, tags={"lm.run_id": run_id}))
        try:
            all_tags = {**{f"metric.{k}": f"{v:.6g}" for k, v in (metrics or {}).items() if "." not in k},
                        **(tags or {})}
            for key, value in all_tags.items():
                self._call("tagging the version", partial(self.client.set_model_version_tag,
                                                          model_name, version.version, key, value))
            if alias:
                self._call("setting the alias", lambda: self.client.set_registered_model_alias(
                    model_name, alias, version.version))
        except BaseException:
            try:
                self.client.delete_model_version(model_name, version.version)
            except Exception:  # noqa: BLE001 - best effort cleanup, the original error is what matters
                pass
            raise
        return self.version(model_name, str(version.version))

    def version(self, model_name: str, ref: str) -> VersionInfo:
        """A version by number or alias (``champion``, ``challenger``)."""
        def get() -> Any:
            if ref.isdigit():
                return self.client.get_model_version(model_name, ref)
            return self.client.get_model_version_by_alias(model_name, ref)
        try:
            mv = self._call(f"looking up {model_name}@{ref}", get)
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
        from mlflow.exceptions import MlflowException

        def get() -> Any:
            try:
                model = self.client.get_registered_model(model_name)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise  # the server is down or refused: not the same as "no such model"
                raise ModelNotFoundError(f"no registered model called {model_name!r}") from exc
            versions = self.client.search_model_versions(f"name='{model_name}'")
            return model, versions
        model, versions = self._call(f"listing versions of {model_name!r}", get)
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        infos = [_info(v, aliases.get(str(v.version), [])) for v in versions]
        return sorted(infos, key=lambda i: int(i.version), reverse=True)

    def registered_models(self) -> list[str]:
        return [m.name for m in self._call("listing models", lambda: self.client.search_registered_models())]

    def promote(self, model_name: str, version: str, *, reason: str = "manual") -> VersionInfo:
        """Point ``champion`` at ``version``; remember the champion it replaces for rollback."""
        target = self.version(model_name, version)
        current = self.alias_version(model_name, CHAMPION)
        if current is not None and current.version == target.version:
            return target
        if current is not None:
            self._call("recording the previous champion", lambda: self.client.set_model_version_tag(
                model_name, target.version, PREVIOUS_TAG, current.version))
        self._call("recording the promotion", lambda: self.client.set_model_version_tag(
            model_name, target.version, PROMOTED_AT_TAG, f"{time.time():.0f}"))
        self._call("recording the reason", lambda: self.client.set_model_version_tag(
            model_name, target.version, PROMOTION_REASON_TAG, reason[:500]))
        self._call("setting champion", lambda: self.client.set_registered_model_alias(
            model_name, CHAMPION, target.version))
        if CHALLENGER in target.aliases:
            self._call("clearing challenger", lambda: self.client.delete_registered_model_alias(
                model_name, CHALLENGER))
        return self.version(model_name, target.version)

    def rollback(self, model_name: str, to_version: str | None = None) -> tuple[VersionInfo, VersionInfo]:
        """Point ``champion`` back at the version it replaced (or at ``to_version``).
        Returns (old champion, new champion)."""
        current = self.alias_version(model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"model {model_name!r} has no champion to roll back")
        target = to_version or current.tags.get(PREVIOUS_TAG)
        if not target:
            raise RegistryError(f"champion v{current.version} of {model_name!r} replaced no earlier version; "
                                "name one with --to VERSION")
        if target == current.version:
            raise RegistryError(f"v{target} is already the champion")
        self.version(model_name, target)  # exists?
        # A rollback is not a promotion: the version keeps the predecessor it had, so rolling back
        # repeatedly walks further back through the history.
        self._call("setting champion", lambda: self.client.set_registered_model_alias(model_name, CHAMPION, target))
        self._call("recording the rollback", lambda: self.client.set_model_version_tag(
            model_name, current.version, "lm.rolled_back_at", f"{time.time():.0f}"))
        return current, self.version(model_name, target)

    def download_model(self, model_name: str, ref: str, dst: Path) -> tuple[Path, VersionInfo]:
        """Download a version's model folder (pipeline + spec) into ``dst``."""
        info = self.version(model_name, ref)
        run_id = info.run_id
        if not run_id:
            raise ModelNotFoundError(f"{model_name} v{info.version} has no run to download from")
        path = self._call(f"downloading {model_name} v{info.version}", lambda: self.client.download_artifacts(
            run_id, MODEL_ARTIFACT, str(dst)))
        return Path(path), info

    def load_pipeline(self, model_name: str, ref: str = CHAMPION) -> tuple[Any, VersionInfo]:
        """The fitted pipeline of a version (by number or alias) and its registry info."""
        import mlflow.sklearn

        with tempfile.TemporaryDirectory() as tmp:
            path, info = self.download_model(model_name, ref, Path(tmp))
            return mlflow.sklearn.load_model(str(path)), info


def _info(mv: Any, aliases: list[str] | None = None) -> VersionInfo:
    tags = dict(mv.tags or {})
    metrics = {k[len("metric."):]: float(v) for k, v in tags.items() if k.startswith("metric.")}
    return VersionInfo(
        name=mv.name, version=str(mv.version), run_id=mv.run_id,
        aliases=sorted(aliases if aliases is not None else list(getattr(mv, "aliases", []) or [])),
        metrics=metrics, tags={k: v for k, v in tags.items() if not k.startswith("metric.")},
        created_at=(mv.creation_timestamp or 0) / 1000, source=mv.source, status=str(mv.status))


def tracker_for(settings: Settings) -> Tracker:
    """The tracker of the server the settings name, with their request timeout."""
    return Tracker(settings.tracking_uri, timeout_s=settings.request_timeout_s)
