"""Benchmarks users run with `ser bench ...`; outside the library import graph (nothing in
`ser_pipeline` or `feature_store` imports this package)."""
