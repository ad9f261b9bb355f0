"""Frozen, digestible configuration dataclasses (DESIGN.md convention 3).

Every spec (feature, augmentation, model, training) is a frozen dataclass with ``to_dict``,
``from_dict`` and ``digest()``. The digest is the sha256 of the sorted JSON of the spec plus the
class's ``CODE_VERSION``; it is the feature-store key, the Prefect cache key and an MLflow tag.
Bump a class's ``CODE_VERSION`` when the code that consumes it changes its output.
"""

from __future__ import annotations

import dataclasses
import functools
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
    LATER_FIELDS: ClassVar[dict[str, Any]] = {}
    """Fields added after identities were first stored, each with its default: :meth:`identity`
    leaves a field out while it holds that default, so digests made before it existed stay valid."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when a value is invalid."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "") -> Self:
        """Build from a mapping; ``where`` (e.g. ``models[cnn].train``) prefixes every error.

        Unknown keys and values of the wrong type raise :class:`ConfigError` naming the field path,
        the value and the valid names."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
        check_fields(where or cls.__name__, data, [f.name for f in dataclasses.fields(cls)])
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                if isinstance(value, list):
                    value = _to_tuple(value)
                check_type(f"{where}.{f.name}" if where else f.name, value, f.type)
                kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}" if where else str(exc)) from None

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` less the :data:`LATER_FIELDS` that hold their defaults: what a digest hashes."""
        return {k: v for k, v in self.to_dict().items() if k not in self.LATER_FIELDS or self.LATER_FIELDS[k] != v}

    def digest(self) -> str:
        return stable_digest(self.identity(), version=f"{type(self).__name__}:{self.CODE_VERSION}")


def _to_tuple(value: list[Any]) -> tuple[Any, ...]:
    return tuple(_to_tuple(v) if isinstance(v, list) else v for v in value)


def check_fields(where: str, data: Any, valid: Any) -> None:
    """ConfigError ``<where>: unknown field 'x'; valid: a, b`` unless every key of ``data`` is valid."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}={data!r}: expected a mapping")
    names = sorted(valid)
    unknown = sorted(str(k) for k in set(data) - set(names))
    if unknown:
        what = "field" if len(unknown) == 1 else "fields"
        listed = ", ".join(repr(u) for u in unknown)
        raise ConfigError(f"{where}: unknown {what} {listed}; valid: {', '.join(names)}")


_EXPONENT_FLOAT = r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"
"""Floats in exponent form without a dot (``3e-4``, ``1E5``): YAML 1.1 reads them as strings."""


@functools.cache
def _yaml_loader() -> type:
    """A ``yaml.SafeLoader`` subclass that also resolves :data:`_EXPONENT_FLOAT` as floats (made once;
    yaml is imported here, not when this module is)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_EXPONENT_FLOAT), list("-+0123456789."))
    return Loader


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``3e-4`` as the float a user means (YAML 1.2, like JSON),
    not as the string YAML 1.1 makes of it. Raises ``yaml.YAMLError`` on invalid YAML."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


_SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_type(field: str, value: Any, annotation: Any) -> None:
    """ConfigError ``<field>='abc': expected float`` when ``value`` does not fit a simple annotation.

    Understands the string annotations of this package (``int``, ``float | None``, ``str``,
    ``bool``, ``dict[...]``, ``tuple[...]``); anything else is left to the spec's ``validate``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    options = [t.strip() for t in text.split("|")]
    if value is None:
        if "None" in options:
            return
        raise ConfigError(f"{field}=None: expected {text}")
    for option in options:
        base = option.split("[", 1)[0]
        if base in _SCALARS:
            if isinstance(value, bool) and base in ("int", "float"):
                continue
            if isinstance(value, _SCALARS[base]):
                return
        elif base == "dict":
            if isinstance(value, dict):
                return
        elif base in ("tuple", "list"):
            if isinstance(value, tuple | list):
                return
        elif base != "None":
            return  # an annotation this check does not understand: the spec validates it
    raise ConfigError(f"{field}={value!r}: expected {text}")


def require(condition: bool, field: str, value: Any, why: str) -> None:
    """Raise ``ConfigError('<field>=<value>: <why>')`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}={value!r}: {why}")
