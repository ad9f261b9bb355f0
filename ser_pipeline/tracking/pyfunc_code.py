"""The MLflow models-from-code definition of the audio-path model (``mlflow.pyfunc.log_model(
python_model=<this file>)``): loading it runs the project's installed code; nothing is unpickled.
The weights and the feature spec travel as plain artifacts (``weights.pt`` state dicts loaded with
``weights_only=True``, ``model.json``)."""

import mlflow

from ser_pipeline.tracking.pyfunc import SerAudioModel

mlflow.models.set_model(SerAudioModel())
