"""The registry: MLflow runs, model versions and aliases, the model bundle and its artifact names; the only code that imports mlflow."""
