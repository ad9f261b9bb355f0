"""Prefect flows: the only package that imports prefect (DESIGN.md convention 1).

- :mod:`flows.ingest`, :mod:`flows.featurize`, :mod:`flows.train`: one flow per stage;
- :mod:`flows.pipeline`: the whole chain (``ser run``);
- :mod:`flows.serve`: deployments from ``prefect.yaml`` served from one process (``ser schedule``).

The stage logic lives in :mod:`ser_pipeline.pipeline.stages` (plain functions, no prefect) and the environment
defaults (telemetry off, ``PREFECT_HOME`` under the workspace) in :mod:`flows.env`; import
:func:`flows.env.configure` before any module that imports prefect.
"""
