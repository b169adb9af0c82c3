"""The model logic, framework-free: features, training, evaluation, explanation, drift, the sequential test and the fast inference path."""
