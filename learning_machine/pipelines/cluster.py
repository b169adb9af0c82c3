"""Cluster settings of the compiled pipelines (kfp-kubernetes): credentials and configuration as
environment from one Secret and one ConfigMap, resource requests, an optional GPU for training, and
retries with backoff. kfp.local ignores all of it, so the same pipeline runs here unchanged."""

from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl import PipelineTask

# The Helm chart creates these two objects with exactly these names in the pipelines' namespace.
CREDENTIALS_SECRET = "learning-machine-pipeline-credentials"  # noqa: S105 - a Secret's name, not a secret
CONFIG_MAP = "learning-machine-pipeline-config"

# Secret key -> environment variable. MinIO (S3) credentials are required; MLflow basic-auth is optional.
SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
OPTIONAL_SECRET_ENV = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                       "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
# ConfigMap key -> environment variable. The tracking URI and S3 endpoint are required.
CONFIG_ENV = {"LM_MLFLOW_TRACKING_URI": "LM_MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}
OPTIONAL_CONFIG_ENV = {"LM_EXPERIMENT_NAME": "LM_EXPERIMENT_NAME", "LM_MODEL_NAME": "LM_MODEL_NAME",
                       "LM_DEPLOYER": "LM_DEPLOYER", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}
# What the `seldon` deployer of the deploy step needs to render the SeldonDeployment the Helm chart expects
# (its namespace, serving image, S3 Secret and in-cluster MLflow URL).
OPTIONAL_CONFIG_ENV.update({name: name for name in (
    "LM_SELDON_NAMESPACE", "LM_SERVING_IMAGE", "LM_SELDON_SECRET_NAME", "LM_SELDON_TRACKING_URI")})


@dataclass(frozen=True)
class ClusterOptions:
    """Compile-time cluster settings; the defaults are what `lm pipelines compile` writes."""

    secret_name: str = CREDENTIALS_SECRET
    config_map_name: str = CONFIG_MAP
    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    train_cpu_request: str = "2"
    train_memory_request: str = "4Gi"
    # GPU for the train/retrain step only: the accelerator resource, how many, and where such nodes are.
    gpu: bool = False
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_toleration_key: str = "nvidia.com/gpu"
    # Retries cover transient failures (a restarted MLflow, an evicted pod); 0 turns them off.
    retries: int = 2
    backoff_duration: str = "30s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "600s"
    image: str | None = None

    def apply(self, task: PipelineTask, *, train: bool = False, retry: bool = True) -> PipelineTask:
        """Configure one task: env from the Secret/ConfigMap, requests, GPU (train), retries, no caching
        (every step writes to MLflow, so a cached result would skip real side effects)."""
        task.set_caching_options(False)
        kubernetes.use_secret_as_env(task, self.secret_name, SECRET_ENV)
        kubernetes.use_secret_as_env(task, self.secret_name, OPTIONAL_SECRET_ENV, optional=True)
        kubernetes.use_config_map_as_env(task, self.config_map_name, CONFIG_ENV)
        kubernetes.use_config_map_as_env(task, self.config_map_name, OPTIONAL_CONFIG_ENV, optional=True)
        task.set_cpu_request(self.train_cpu_request if train else self.cpu_request)
        task.set_memory_request(self.train_memory_request if train else self.memory_request)
        if train and self.gpu:
            task.set_accelerator_type(self.accelerator_type)
            task.set_accelerator_limit(self.accelerator_limit)
            for key, value in self.gpu_node_selector.items():
                kubernetes.add_node_selector(task, key, value)
            kubernetes.add_toleration(task, key=self.gpu_toleration_key, operator="Exists", effect="NoSchedule")
        if retry and self.retries > 0:
            task.set_retry(num_retries=self.retries, backoff_duration=self.backoff_duration,
                           backoff_factor=self.backoff_factor, backoff_max_duration=self.backoff_max_duration)
        if self.image:
            task.set_container_image(self.image)
        return task


DEFAULT_OPTIONS = ClusterOptions()
# Locally a failure is deterministic (bad data, a server that is down): retrying only delays the message.
LOCAL_OPTIONS = ClusterOptions(retries=0)
