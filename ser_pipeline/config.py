"""Frozen, digestible configuration dataclasses (DESIGN.md convention 3).

Every spec (feature, augmentation, model, training) is a frozen dataclass with ``to_dict``,
``from_dict`` and ``digest()``. The digest is the sha256 of the sorted JSON of the spec plus the
class's ``CODE_VERSION``; it is the feature-store key, the Prefect cache key and an MLflow tag.
Bump a class's ``CODE_VERSION`` when the code that consumes it changes its output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Self

from ser_pipeline.errors import ConfigError


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def stable_digest(obj: Any, *, version: str = "", length: int = 16) -> str:
    """Hex sha256 of ``canonical_json(obj)`` and ``version``, cut to ``length`` characters."""
    payload = canonical_json({"obj": obj, "version": version})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of every frozen spec. Subclasses set ``CODE_VERSION`` and may override ``validate``."""

    CODE_VERSION: ClassVar[str] = "1"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when a value is invalid."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                if isinstance(value, list):
                    value = _to_tuple(value)
                kwargs[f.name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        return stable_digest(self.to_dict(), version=f"{type(self).__name__}:{self.CODE_VERSION}")


def _to_tuple(value: list[Any]) -> tuple[Any, ...]:
    return tuple(_to_tuple(v) if isinstance(v, list) else v for v in value)


def require(condition: bool, field: str, value: Any, why: str) -> None:
    """Raise ``ConfigError('<field>=<value>: <why>')`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}={value!r}: {why}")
