"""Prefect wiring: digest cache keys, cached-state detection, retries of transient tracking errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, task
from prefect.states import Completed, Failed

from flows.common import digest_cache_key, outcome, retry_on_tracking_error
from ser_pipeline.errors import TrackingError, TrainingError
from ser_pipeline.pipeline import stages  # noqa: F401
from ser_pipeline.pipeline.records import is_done, read_record, write_record  # noqa: F401


def test_cache_key_only_when_the_outputs_exist(tmp_path: Path) -> None:
    key_fn = digest_cache_key("featurize")
    params = {"key": "abc", "root": str(tmp_path), "force": False}
    assert key_fn(None, params) is None  # nothing on disk: never trust a cache
    out = tmp_path / "set"
    out.mkdir()
    write_record(tmp_path, "featurize", "abc", {"outputs": [str(out)]})
    assert key_fn(None, params) == "ser-featurize-abc"
    assert key_fn(None, {**params, "force": True}) is None
    out.rmdir()
    assert key_fn(None, params) is None


def test_outcome_marks_prefect_cache_hits() -> None:
    assert outcome(Completed(data={"status": "computed", "seconds": 3.0}))["status"] == "computed"
    cached = outcome(Completed(data={"status": "computed", "seconds": 3.0}, name="Cached"))
    assert cached == {"status": "cached", "seconds": 0.0}


def test_retry_condition_only_for_tracking_errors() -> None:
    assert retry_on_tracking_error(None, None, Failed(data=TrackingError("server down")))
    assert not retry_on_tracking_error(None, None, Failed(data=TrainingError("NaN loss")))
    assert not retry_on_tracking_error(None, None, Completed(data={"ok": 1}))


@pytest.mark.slow  # starts Prefect's temporary API server
def test_transient_tracking_failure_is_retried_in_a_flow() -> None:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_tracking_error, persist_result=False)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TrackingError("MLflow tracking server http://127.0.0.1:1 is unreachable")
        return "logged"

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_tracking_error, persist_result=False)
    def broken() -> str:
        calls.append(2)
        raise TrainingError("not transient")

    @flow(persist_result=False)
    def run() -> tuple[str, object]:
        return flaky(), broken(return_state=True)

    value, state = run()
    assert value == "logged" and calls.count(1) == 3
    assert state.is_failed() and calls.count(2) == 1  # a non-transient error is not retried
