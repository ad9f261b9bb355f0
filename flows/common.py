"""Shared Prefect wiring: digest cache keys, cached-state detection, retry conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.states import State

from ser_pipeline.errors import TrackingError
from ser_pipeline.pipeline.records import is_done, read_record


def digest_cache_key(stage: str) -> Callable[[Any, dict[str, Any]], str | None]:
    """A ``cache_key_fn`` for Prefect tasks of ``stage``: ``ser-<stage>-<key>`` from the task's ``key``
    parameter (built from content digests), used only when the stage record on disk says the outputs
    are still there and the task is not forced. Never Prefect's default policy (it includes the run id).
    """

    def key_fn(_context: Any, parameters: dict[str, Any]) -> str | None:
        if parameters.get("force"):
            return None
        key, root = parameters["key"], parameters["root"]
        if stage == "track":
            return f"ser-track-{key}" if read_record(root, "track", key) else None
        return f"ser-{stage}-{key}" if is_done(root, stage, key) else None

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def outcome(state: State) -> dict[str, Any]:
    """The stage dict of a finished task state, marked ``cached`` when Prefect served it from its cache."""
    result = dict(state.result())
    if state.name == "Cached":
        result["status"] = "cached"
        result["seconds"] = 0.0
    return result


def retry_on_tracking_error(_task: Any, _task_run: Any, state: State) -> bool:
    """Retry only transient tracking failures (an unreachable or failing MLflow server)."""
    try:
        state.result()
    except TrackingError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False
