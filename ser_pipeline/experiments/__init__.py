"""Experiments: :class:`~ser_pipeline.experiments.config.ExperimentConfig` and its resolution,
the fold runner, and :class:`~ser_pipeline.experiments.record.ExperimentRecord`, the one typed
contract the runner writes and tracking, the pipeline stages and ``ser compare`` read."""
