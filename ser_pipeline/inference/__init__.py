"""Inference: a model folder in, class posteriors out. Depends on the models, the dataset helpers
and the features only; never on training, experiments or tracking (``tracking`` wraps this
package as an MLflow pyfunc, not the reverse)."""
