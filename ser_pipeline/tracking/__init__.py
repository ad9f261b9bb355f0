"""MLflow tracking: the only package that imports mlflow (DESIGN.md convention 1).

It reads an experiment's :class:`~ser_pipeline.experiments.record.ExperimentRecord` and logs it as

- one MLflow experiment per corpus and protocol (``<corpus>-<protocol>`` unless named);
- one parent run per model configuration (run name = model label, e.g. ``cnn`` or
  ``att_res-1a2b3c4d``, plus ``-s<seed>``), with a nested run per fold (``<label>/<fold>``);
- params: the resolved config flattened (``hparams.channels``, ``protocol_options.k``...);
- tags: ``ser.digest.{manifest,features,augment,config}``, ``ser.git_commit``, ``ser.version``,
  ``ser.protocol``, ``ser.speaker_dependent``, ``ser.model``, ``ser.corpus``, ``ser.kind``;
- metrics: per epoch in each fold run (``train_loss``, ``val_loss``, ``val_ua``; step = epoch), per
  fold (``wa``, ``ua``, ``macro_f1``, ``recall_<class>``), on the parent the pooled values
  (``pooled_<m>``) and mean/std over folds (``mean_<m>``, ``std_<m>``);
- artifacts: confusion PNG+CSV per fold (fold runs) and pooled, predictions.csv, config.json,
  metrics.json and ``training_curves.png`` (parent);
- the model as an ``mlflow.pyfunc`` that predicts from audio paths (feature extraction + view +
  network, from :mod:`ser_pipeline.inference.predictor`), registered as ``ser-<model>-<corpus>`` with the alias
  ``champion`` on the version with the best mean UA over folds;
- the manifest as an MLflow dataset input (name, digest, source).

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``
(MLflow 3 recommends a database backend over the plain file store for local use);
``MLFLOW_TRACKING_URI`` selects a server.

Modules: ``uri`` (no mlflow import: the URI, reachability), ``runs`` (logging a record),
``pyfunc`` (the model and the registry), ``compare`` (reading runs back). This ``__init__`` imports
none of them, so ``ser_pipeline.tracking.uri`` stays free of the mlflow import.
"""

