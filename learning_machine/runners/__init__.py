"""Pipeline runners: where a pipeline runs. One small interface and the built-in backends
(``local``: kfp.local on this machine; ``kubeflow``: a KFP API server) listed in
:data:`learning_machine.backends.PIPELINE_RUNNERS`, chosen by ``LM_PIPELINE_RUNNER``."""
