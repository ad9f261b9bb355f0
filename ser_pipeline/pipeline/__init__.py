"""The pipeline: :class:`~ser_pipeline.pipeline.config.PipelineConfig` (the ``ser run`` YAML) and
the plain-function stages (:mod:`ser_pipeline.pipeline.stages`) that ``flows/`` wires with Prefect.
No Prefect import here."""
