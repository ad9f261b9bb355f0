"""Fixtures for the model tests."""

from __future__ import annotations

import pytest

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.workspace import Workspace


@pytest.fixture(scope="session")
def tiny_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """4 speakers x 2 classes x 3 utterances of the synthetic demo corpus, ingested as 'tiny'.

    Shared by every model test, so feature sets computed for one model are reused by the next.
    """
    ws = Workspace.resolve(tmp_path_factory.mktemp("tiny") / "ser-data")
    csv = generate_demo_corpus(ws.demo, n_speakers=4, per_class=3, classes=("anger", "sadness"))
    ingest("csv", csv, "tiny", ws)
    return ws
