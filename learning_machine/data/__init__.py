"""Datasets: the dataset spec (schema, units, ranges, subgroups), the built-in sources and the synthetic cohort with its drift scenarios."""
