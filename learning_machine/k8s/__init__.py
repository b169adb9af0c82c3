"""Kubernetes rendering: the chart's service table (from the same builders `lm up` runs) and the Seldon manifests."""
