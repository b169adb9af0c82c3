"""The one settings object. Built once at the entry point (CLI, server, component) and passed down;
nothing here reads the environment at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from learning_machine import backends
from learning_machine.errors import ConfigurationError

# Settings that name a backend: what the name is called in messages, and the valid names.
_BACKEND_FIELDS: dict[str, tuple[str, dict[str, str] | tuple[str, ...]]] = {
    "deployer": ("deployer", backends.DEPLOYERS),
    "pipeline_runner": ("pipeline runner", backends.PIPELINE_RUNNERS),
    "model_kind": ("model kind", backends.MODEL_KINDS),
    "drift_detector": ("drift detector", backends.DRIFT_DETECTORS),
}


class Settings(BaseSettings):
    """Every knob of the platform. Environment variables use the ``LM_`` prefix (``LM_MODEL_NAME``)."""

    model_config = SettingsConfigDict(env_prefix="LM_", extra="ignore", validate_default=True)

    environment: Literal["development", "production"] = Field(
        "development", description="`development` allows local defaults; `production` demands explicit, safe ones.")
    home: Path = Field(Path(".lm"), description="Folder for the embedded services' state and logs (git-ignored).")

    mlflow_tracking_uri: str | None = Field(
        None, description="URL of an MLflow tracking server. Unset: `lm up` runs a managed local server.")
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("LM_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"),
        description="S3 (MinIO) endpoint of the artifact store; MLflow's own MLFLOW_S3_ENDPOINT_URL is read too. "
        "`lm doctor` checks it when set.")
    mlflow_host: str = Field("127.0.0.1", description="Interface the managed MLflow server binds to.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the managed MLflow server.")
    mlflow_backend_store_uri: str | None = Field(
        None, description="Backend store of the managed MLflow server (default: SQLite under `home`).")
    mlflow_artifacts_destination: str | None = Field(
        None, description="Where the managed server keeps artifacts: a folder or `s3://bucket/prefix` "
        "(default: a folder under `home`). S3 uses MLFLOW_S3_ENDPOINT_URL and the AWS_* credentials.")
    mlflow_workers: int = Field(2, ge=1, le=16, description="Worker processes of the managed MLflow server.")
    experiment_name: str = Field("learning-machine", description="MLflow experiment for training runs.")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one call to a service.")
    startup_timeout_s: float = Field(180.0, gt=0, description="How long `lm up` waits for a service to be healthy.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines of the long-running services (gateway, monitor, dashboard, the model "
        "server's runtimes): `text` for a terminal, or `json` (one object per line: time, level, logger, message, "
        "request_id, exc_info) for a log collector; the Helm chart sets `json`.")

    model_name: str = Field("clinical-risk", min_length=1, description="Registered model name in MLflow.")
    dataset: str = Field("synthetic-cohort", description="Dataset to train on: a built-in name or a CSV path.")
    dataset_spec: Path | None = Field(None, description="Spec file for a CSV dataset (bring your own).")
    model_kind: str = Field("xgboost", description="Model kind from the registry: xgboost, logistic-regression.")
    train_rows: int = Field(5000, ge=100, description="Rows the first model is trained on (generated datasets).")
    seed: int = Field(42, description="Seed for data generation and training.")
    test_fraction: float = Field(0.25, gt=0.05, lt=0.9, description="Held-out fraction for evaluation.")
    retrain_candidates: Literal["best", "warm-start", "scratch"] = Field(
        "best", description="What retraining trains: the best on unseen new rows of the champion continued, a "
                            "fresh model and a fresh one at lower capacity (best), or only the continued or the fresh "
                            "one.")
    recalibration_alpha: float = Field(
        0.05, gt=0, lt=1, description="Level of the closed test that chooses a recalibration's map (no update, "
        "recalibration-in-the-large or logistic recalibration; Vergouwe et al. 2017): each likelihood-ratio test "
        "must be significant at this level to choose the larger map.")
    max_invalid_fraction: float = Field(
        0.01, ge=0, le=1, description="Training refuses data with more feature cells than this that break the "
        "spec (out of range, wrong type, unseen category).")
    code_commit: str = Field(
        "", max_length=100, description="The code commit a version's change record names when the code is not a git "
        "checkout (an image built from one: set it at build time); a git checkout's own HEAD wins.")
    image: str = Field("", max_length=300, description="The container image the pipeline steps run in, as the change "
                       "record names it (e.g. `registry/learning-machine@sha256:...`; empty on one machine).")

    # -- serving (model server, deployers) ------------------------------------------------------
    deployer: str = Field("none", description="How a new champion is served: none, local (embedded MLServer) "
                          "or seldon (a SeldonDeployment). Unknown names list the valid ones.")
    model_server_host: str = Field("127.0.0.1", description="Interface the managed MLServer binds to.")
    model_server_port: int = Field(8080, ge=1, le=65535, description="HTTP port of the managed MLServer.")
    model_server_grpc_port: int = Field(8081, ge=1, le=65535, description="gRPC port of the managed MLServer.")
    model_server_metrics_port: int = Field(8082, ge=1, le=65535,
                                           description="Prometheus metrics port of the managed MLServer.")
    model_ref: str = Field("champion", min_length=1, description="Version (number) or alias the model server "
                           "loads at start; promotions then swap it through the repository API.")
    drift_detector: str = Field("TabularDrift", description="alibi-detect detector of the drift runtime: "
                                "TabularDrift, KSDrift or ChiSquareDrift (numpy/scipy, no TensorFlow).")
    drift_p_val: float = Field(0.05, gt=0, lt=1, description="Significance of the drift test (before the "
                               "Bonferroni correction over features).")
    seldon_namespace: str = Field("learning-machine", description="Kubernetes namespace of the SeldonDeployment.")
    seldon_deployment_name: str | None = Field(
        None, description="Name of the SeldonDeployment (default: the model name).")
    serving_image: str = Field("ghcr.io/learning-machine/serving:latest",
                               description="The project's serving image (MLServer with our runtimes) for Seldon.")
    seldon_secret_name: str = Field("mlflow-s3-credentials", description="Secret with the MinIO/S3 credentials "
                                    "(rclone-style envSecretRefName) for the Seldon containers.")
    seldon_tracking_uri: str = Field("http://mlflow.learning-machine.svc:5000", description="MLflow URL as the "
                                     "Seldon pods reach it (cluster-internal).")

    # -- pipelines (KFP) ---------------------------------------------------------------------------
    pipeline_runner: str = Field("local", description="Where `lm pipelines run` and the monitor run pipelines: "
                                 "local (kfp.local, this machine) or kubeflow (a KFP API server at `kfp_host`).")
    kfp_host: str | None = Field(None, description="URL of the Kubeflow Pipelines API (runner `kubeflow`, "
                                 "`lm pipelines submit/schedule`).")
    kfp_token_path: Path = Field(
        Path("/var/run/secrets/kubeflow/pipelines/token"),
        validation_alias=AliasChoices("kfp_token_path", "LM_KFP_TOKEN_PATH", "KF_PIPELINES_SA_TOKEN_PATH"),
        description="Projected service-account token (audience pipelines.kubeflow.org) that authenticates to "
        "a multi-user Kubeflow Pipelines API from inside the cluster; KFP's own KF_PIPELINES_SA_TOKEN_PATH is "
        "read too. No file there: the client sends no credentials.")
    pipeline_root: Path | None = Field(None, description="Where local pipeline runs keep their artifacts "
                                       "(default: `home`/pipelines).")
    gate_metric: str = Field("auc", description="Metric the champion/challenger gate compares on the same held-out "
                             "data: auc, accuracy, f1 (higher wins) or brier, log_loss, ece (lower wins).")
    gate_margin: float = Field(0.0, ge=-1, le=1, description="How much better than the champion a candidate must "
                               "be to be promoted (in the gate metric's units; with the evidence rule, the lower "
                               "end of the 95 % interval of the difference must clear it).")
    gate_rule: Literal["evidence", "point"] = Field(
        "evidence", description="How the gate compares the candidate with the champion on the same held-out rows: "
        "`evidence` (paired intervals: DeLong for AUC, paired log-loss and Brier; better with 95 % confidence on "
        "the gate metric and not worse than the non-inferiority margins overall and on every subgroup) or `point` "
        "(the point estimates, the rule before 2026-12).")
    gate_noninferiority_auc: float = Field(0.03, ge=0, le=0.5, description="Evidence rule of a dataset without a change-control plan (the plan's own margins apply otherwise): the candidate's AUC may "
                                           "be lower than the champion's by at most this (interval's lower end), "
                                           "overall and on every subgroup.")
    gate_noninferiority_log_loss: float = Field(0.02, ge=0, le=1, description="Evidence rule without a plan: the candidate's "
                                                "log-loss may exceed the champion's by at most this (calibration).")
    gate_noninferiority_subgroup_auc: float = Field(0.10, ge=0, le=0.5, description="Evidence rule without a plan: on every "
                                                    "subgroup, the candidate's AUC may be lower by at most this.")
    gate_min_subgroup_events: int = Field(30, ge=5, description="Evidence rule without a plan: a subgroup is tested only with at "
                                          "least this many rows of each outcome (else reported as not assessable).")
    gate_underpowered_subgroups: Literal["no-harm", "hold"] = Field(
        "no-harm", description="Evidence rule without a plan: a subgroup whose interval is wider than its margin cannot show "
        "non-inferiority even at no difference; no-harm: it must then only not be worse beyond doubt (recorded "
        "as such), hold: the candidate waits for more rows.")
    change_plan: Path | None = Field(
        None, description="The change-control plan (YAML, docs/change-control.md) every automatic promotion is "
        "checked against; default: the plan shipped for the dataset, else one made of the `gate_*` settings. A "
        "candidate outside the plan waits for an admin's approval.")
    max_missing_fraction: float = Field(0.2, ge=0, le=1, description="Validation fails when more feature cells "
                                        "than this are missing.")
    # max_invalid_fraction (above) is also the validate step's limit for cells that break the spec.

    # -- monitor, policy and the learning loop -------------------------------------------------------
    monitor_host: str = Field("127.0.0.1", description="Interface of the monitor's /health endpoint.")
    monitor_port: int = Field(8090, ge=1, le=65535, description="Port of the monitor's /health endpoint.")
    monitor_interval_s: float = Field(5.0, gt=0, description="Seconds between two reads of the prediction feed.")
    monitor_window_rows: int = Field(200, ge=20, description="Predictions per monitoring window.")
    monitor_performance_rows: int = Field(400, ge=20, description="Recent outcomes used for realised performance.")
    monitor_experiment: str = Field("learning-machine-monitoring",
                                    description="MLflow experiment of the monitoring run (metrics per window).")
    monitor_sequential: bool = Field(True, description="Run the sequential test (CUSUM per feature and on the "
                                     "model's log-loss) beside the windowed one; its alarms trigger retraining.")
    monitor_false_alarms_per_10k: float = Field(1.0, gt=0, le=100, description="False-alarm budget of the sequential "
                                                "test: alarms per 10,000 predictions on unchanged data.")
    policy_drift_windows: int = Field(2, ge=1, description="Retrain when this many consecutive windows drift.")
    policy_auc_floor: float | None = Field(0.70, ge=0, le=1, description="Retrain when realised AUC falls below.")
    policy_auc_drop: float = Field(0.05, ge=0, le=1, description="The AUC floor fires only when the realised AUC is "
                                   "also this much below the held-out AUC the serving version was registered with "
                                   "(a version promoted where no model reaches the floor is not retrained forever).")
    policy_estimated_windows: int = Field(2, ge=0, description="Retrain when this many consecutive windows have an AUC "
                                          "estimated from the model's scores (CBPE, before outcomes) whose 95 % upper "
                                          "bound is below the floor's limit (0: show the estimate only).")
    policy_min_outcomes: int = Field(100, ge=10, description="Outcomes needed before realised AUC counts.")
    policy_recalibrate: bool = Field(True, description="When the serving model's calibration drifted but it still "
                                     "ranks (realised AUC not below its validated AUC beyond the 95 % noise), ask "
                                     "for a `recalibrate` change (refit only the score-to-probability map) instead "
                                     "of a retraining.")
    policy_calibration_intercept: float = Field(0.2, gt=0, le=5, description="Calibration drifted when the 95 % "
                                                "interval of the realised calibration-in-the-large (logit scale, 0 "
                                                "ideal) lies beyond plus or minus this.")
    policy_calibration_slope_low: float = Field(0.8, gt=0, le=1, description="... or the 95 % interval of the "
                                                "realised calibration slope (1 ideal) lies below this ...")
    policy_calibration_slope_high: float = Field(1.2, ge=1, le=10, description="... or above this.")
    policy_schedule_s: float | None = Field(None, gt=0, description="Retrain at least this often (unset: never).")
    policy_cooldown_s: float = Field(0.0, ge=0, description="Minimum seconds between two retrainings (0: none; "
                                     "the loop runs one retraining at a time and retries a change only when "
                                     "`loop_retry_outcomes` new outcomes have arrived).")
    loop_retrain_rows: int = Field(2000, ge=50, description="Recent labelled records a retraining uses.")
    loop_min_retrain_rows: int = Field(200, ge=20, description="Retraining needs at least this many (labelled "
                                       "predictions made since the change, when the change point is known).")
    loop_shadow: bool = Field(True, description="A challenger the retraining gate could not prove better is not "
                              "discarded: it scores every new record in the shadow (stored apart, never shown to "
                              "clinicians) and is promoted as soon as the paired evidence on those records allows.")
    loop_shadow_first_look: int = Field(100, ge=20, description="The shadow's first look at its paired evidence, in "
                                        "labelled records; then at each doubling.")
    loop_shadow_max_rows: int = Field(1600, ge=20, description="The shadow ends (challenger retired) when this many "
                                      "paired records have not proven it better.")
    loop_retry_outcomes: int = Field(200, ge=20, description="After a refused challenger, the change is retried "
                                     "once this many more labelled predictions since the change have arrived (the "
                                     "gate then has more evidence); never earlier, and never while a retraining "
                                     "runs.")
    loop_reference_rows: int = Field(1000, ge=0, description="Rows of the original training data (regenerated "
                                     "by seed) a retraining adds to the recent records: old plus new data.")
    loop_gate_margin: float = Field(0.0, ge=0, description="A retrained model is promoted only when its held-out "
                                    "AUC beats the champion's by at least this much.")

    # -- gateway and database ----------------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Interface the gateway (public REST API) binds to.")
    gateway_port: int = Field(8000, ge=1, le=65535, description="Port of the gateway.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the platform database (`postgresql://...` or `sqlite:///...`). "
        "Unset: a SQLite file under `home`.")
    model_server_url: str | None = Field(
        None, description="Base URL of the V2 model server the gateway calls (default: the embedded MLServer).")
    explainer_url: str | None = Field(
        None, description="Base URL of the V2 server of the explainer (`<model>-explainer`) the gateway calls "
        "(default: the model server, which serves all three in the embedded setup; in Seldon v1 the explainer "
        "has a Service of its own).")
    drift_detector_url: str | None = Field(
        None, description="Base URL of the V2 server of the drift detector (`<model>-drift`) the monitor calls "
        "(default: the model server; in Seldon v1 the detector is a SeldonDeployment of its own).")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest request body the gateway accepts.")
    max_batch_rows: int = Field(1000, ge=1, description="Most records one prediction request may carry.")
    token_cache_s: float = Field(
        1.0, ge=0, description="Seconds the gateway remembers a valid API token before asking the database "
        "again (expiry is checked on every request): a revoked token is refused within this time. 0: ask on "
        "every request.")
    token_ttl_days: float = Field(90, ge=0, description="Days a new API token stays valid (`lm tokens create` and "
                                  "the tokens `lm up` makes); 0: it never expires. Tokens a deployment registers "
                                  "from its Secret (`lm tokens import`) are rotated with the Secret instead.")
    token: SecretStr | None = Field(
        None, exclude=True, description="API token `lm stream`, `lm monitor` and the dashboard present to the "
        "gateway (default: the one `lm up` wrote for their role in `tokens_file`). Never exported to child "
        "processes or printed.")
    tokens_file: Path | None = Field(
        None, description="Where `lm up` writes the first API tokens, one per role (default: `home`/tokens.json).")

    # -- dashboard ---------------------------------------------------------------------------------
    dashboard_host: str = Field("127.0.0.1", description="Interface the dashboard (Streamlit) binds to.")
    dashboard_port: int = Field(8501, ge=1, le=65535, description="Port of the dashboard.")
    dashboard_gateway_url: str | None = Field(
        None, description="Gateway URL the dashboard calls (default: the gateway's host and port; in Kubernetes "
        "the gateway Service).")
    dashboard_mlflow_url: str | None = Field(
        None, description="MLflow UI URL the dashboard links to, as a browser reaches it (default: the tracking URI).")

    @field_validator("deployer", "pipeline_runner", "model_kind", "drift_detector")
    @classmethod
    def _known_backend(cls, name: str, info: ValidationInfo) -> str:
        """A backend named in :mod:`learning_machine.backends`, or an error listing the valid names."""
        from learning_machine.errors import UnknownNameError

        what, valid = _BACKEND_FIELDS[str(info.field_name)]
        try:
            return backends.check_name(what, name, valid)
        except UnknownNameError as exc:
            raise ValueError(exc.message) from exc

    @model_validator(mode="after")
    def _fail_fast(self) -> Settings:
        if self.mlflow_tracking_uri is not None:
            scheme = urlparse(self.mlflow_tracking_uri).scheme
            if scheme not in ("http", "https"):
                raise ValueError(
                    f"LM_MLFLOW_TRACKING_URI must be an http(s) URL of a tracking server, not {scheme or 'a path'!r}")
        if self.environment == "production":
            if self.mlflow_tracking_uri is None:
                raise ValueError("in production LM_MLFLOW_TRACKING_URI must point at the shared tracking server")
            if self.mlflow_tracking_uri.startswith("http://") and not _is_cluster_local(self.mlflow_tracking_uri):
                raise ValueError("in production the tracking server must use https unless it is cluster-internal")
            # SQLite serialises writers and lives on one pod's disk: production needs a shared database.
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError("in production LM_DATABASE_URL must point at a PostgreSQL database, not SQLite")
        return self

    # ----------------------------------------------------------------------------------------------
    @property
    def mlflow_managed(self) -> bool:
        """True when `lm up` runs the tracking server itself."""
        return self.mlflow_tracking_uri is None

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.mlflow_host}:{self.mlflow_port}"

    @property
    def model_server_managed(self) -> bool:
        """True when `lm up` / `lm serve` run the model server (MLServer) themselves."""
        return self.model_server_url is None

    def serving_deployer(self) -> str:
        """The deployer a promotion uses: ``deployer``, or ``local`` when none is configured and `lm up`
        manages the model server (the embedded default serves what is promoted)."""
        return "local" if self.deployer == "none" and self.model_server_managed else self.deployer

    @property
    def run_dir(self) -> Path:
        """Pid files and logs of managed processes."""
        return self.home / "run"

    @property
    def monitor_health_url(self) -> str:
        """The embedded monitor's address (its /health endpoint)."""
        return f"http://{self.monitor_host}:{self.monitor_port}"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    def backend_store_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    def artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str((self.mlflow_dir / "artifacts").resolve())

    def pipeline_root_dir(self) -> Path:
        """Artifacts of local pipeline runs."""
        return (self.pipeline_root or self.home / "pipelines").resolve()

    def database_uri(self) -> str:
        """The platform database: ``database_url`` or a SQLite file under ``home``."""
        return self.database_url or f"sqlite:///{(self.home / 'db' / 'learning-machine.db').resolve()}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.dashboard_host}:{self.dashboard_port}"

    def model_server_base_url(self) -> str:
        """The model server the gateway calls: ``model_server_url``, else the managed MLServer."""
        return (self.model_server_url or f"http://{self.model_server_host}:{self.model_server_port}").rstrip("/")

    def explainer_base_url(self) -> str:
        """The server of the explainer: ``explainer_url``, else the model server."""
        return (self.explainer_url or self.model_server_base_url()).rstrip("/")

    def drift_detector_base_url(self) -> str:
        """The server of the drift detector: ``drift_detector_url``, else the model server."""
        return (self.drift_detector_url or self.model_server_base_url()).rstrip("/")

    def tokens_path(self) -> Path:
        return self.tokens_file or self.home / "tokens.json"


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``LM_*`` environment variables, for a child process that must agree with this one
    (a managed service, or a kfp.local step, which builds its settings from the environment)."""
    import json

    # Never the caller's API token: a child picks its own role's token (and a SecretStr dumps as stars).
    env = {f"LM_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
           for name, value in settings.model_dump(mode="json", exclude={"token"}).items() if value is not None}
    env["LM_HOME"] = str(settings.home.resolve())
    env["LM_MLFLOW_TRACKING_URI"] = settings.tracking_uri
    return env


def _is_cluster_local(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host.endswith(".svc") or host.endswith(".svc.cluster.local") or "." not in host


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and overrides), with a clear error for a bad value."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "LM_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
            lines.append(f"{name}: {err['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(lines)) from exc
