"""ser-pipeline: an offline feature store and training pipeline for speech emotion recognition.

The domain library. Importable and testable without Prefect or MLflow: only ``flows/`` imports
prefect and only :mod:`ser_pipeline.tracking` imports mlflow.
"""

__version__ = "0.1.0"
