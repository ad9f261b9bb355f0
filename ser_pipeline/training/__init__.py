"""Training: :class:`~ser_pipeline.training.config.TrainConfig` (strict), the one epoch loop
(:func:`~ser_pipeline.training.loop.fit`), speaker pre-training, and the trainer kinds behind one
protocol in a registry (:mod:`ser_pipeline.training.trainers`). No Prefect, no MLflow, no store."""
