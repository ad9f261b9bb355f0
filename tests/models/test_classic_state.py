"""The classic estimator is stored as plain numbers (JSON), never a pickle, and predicts the same."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser_pipeline.inference.model_folder import save_model_folder
from ser_pipeline.models.classic import FunctionalsSVM

pytest.importorskip("sklearn")


def test_state_round_trips_through_json_and_gives_the_same_scores(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12)) + np.repeat(np.eye(3, 12) * 3, 20, axis=0)
    y = np.repeat([0, 1, 2], 20)
    svm = FunctionalsSVM(4, C=0.1).fit(X, y)  # class 3 never seen
    folder = save_model_folder(tmp_path / "model", {"model": "svm"}, model=svm)
    assert not list(folder.glob("*.pkl")) and json.loads((folder / "model.json").read_text())["estimator_file"] == "estimator.json"
    state = json.loads((folder / "estimator.json").read_text())
    assert state["classes"] == [0, 1, 2] and np.asarray(state["coef"]).shape == (3, 12)
    np.testing.assert_allclose(FunctionalsSVM.scores_from_state(state, X), svm.pipeline.decision_function(X), rtol=1e-10, atol=1e-10)
