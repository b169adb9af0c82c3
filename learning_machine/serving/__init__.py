"""MLServer runtimes (the model, its explainer, its drift detector): thin ``MLModel`` adapters over the model logic, and the serving image."""
