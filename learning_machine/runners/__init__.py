"""Pipeline runners: where a pipeline runs. One small interface, a registry of the built-in backends
(``local``: kfp.local on this machine; ``kubeflow``: a KFP API server), chosen by ``LM_PIPELINE_RUNNER``."""
