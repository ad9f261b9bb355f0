"""Corpus adapters (one file per corpus, DESIGN.md convention 2) and ingestion.

Every adapter registers ``prepare(corpus_dir: Path, **options) -> (rows, rejects)`` with
:func:`register_corpus`. Parsing never writes; :func:`ingest` validates, applies the label
configuration (keep / merge) and writes the manifest through :mod:`ser_pipeline.manifest`.

Options every adapter takes (``COMMON_OPTIONS``), applied here to the adapter's rows:
``min_duration`` (seconds, default 0.25): shorter utterances are rejected as
``too short: 0.004 s < 0.25 s``. Truncated files are rejected by every adapter's audio check
(:func:`ser_pipeline.audio.recording_problem`).

>>> from ser_pipeline.corpora import CORPORA
>>> "casia" in CORPORA
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser_pipeline.audio import MIN_DURATION_S
from ser_pipeline.config import require
from ser_pipeline.corpora.common import drop_short
from ser_pipeline.corpora.emotions import LabelConfig
from ser_pipeline.errors import ConfigError, ManifestError
from ser_pipeline.manifest import Reject, to_frame, write_manifest
from ser_pipeline.registry import Registry
from ser_pipeline.workspace import Workspace

PrepareFn = Callable[..., tuple[list[dict[str, Any]], list[Reject]]]

COMMON_OPTIONS: dict[str, tuple[Any, str]] = {
    "min_duration": (MIN_DURATION_S, "shortest utterance kept, in seconds (shorter: rejected as 'too short')"),
}


@dataclass(frozen=True)
class CorpusEntry:
    """A registered adapter: its ``prepare`` function, expected layout and description."""

    name: str
    prepare: PrepareFn
    layout: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)  # option -> help

    def option_defaults(self) -> dict[str, Any]:
        """Keyword options of ``prepare`` with their defaults, plus the options common to every adapter."""
        params = inspect.signature(self.prepare).parameters.values()
        own = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        return {**{k: default for k, (default, _help) in COMMON_OPTIONS.items()}, **own}

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for ``ser corpora --json``."""
        defaults = self.option_defaults()
        helps = {**{k: h for k, (_d, h) in COMMON_OPTIONS.items()}, **self.options}
        return {
            "name": self.name,
            "layout": self.layout,
            "description": self.description,
            "options": {k: {"default": defaults.get(k), "help": v} for k, v in sorted(helps.items())},
        }

    def run(self, corpus_dir: Path, options: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[Reject]]:
        """``prepare`` with the adapter's own options, then the common checks (``min_duration``)."""
        own = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
        rows, rejects = self.prepare(corpus_dir, **own)
        min_duration = options.get("min_duration", COMMON_OPTIONS["min_duration"][0])
        rows, short = drop_short(rows, float(min_duration))
        return rows, sorted([*rejects, *short], key=lambda r: (r.path, r.reason))


CORPORA: Registry[CorpusEntry] = Registry("corpus adapter")

ADAPTER_MODULES = (
    "ser_pipeline.corpora.emodb",
    "ser_pipeline.corpora.casia",
    "ser_pipeline.corpora.ravdess",
    "ser_pipeline.corpora.savee",
    "ser_pipeline.corpora.iemocap",
    "ser_pipeline.corpora.tess",
    "ser_pipeline.corpora.cremad",
    "ser_pipeline.corpora.csv_corpus",
)


def register_corpus(
    name: str, *, layout: str, description: str = "", options: Mapping[str, str] | None = None
) -> Callable[[PrepareFn], PrepareFn]:
    """Decorator: register ``prepare`` as the adapter ``name`` with its published ``layout``."""

    def decorator(fn: PrepareFn) -> PrepareFn:
        CORPORA.add(name, CorpusEntry(name, fn, layout, description, dict(options or {})))
        return fn

    return decorator


def get_corpus(name: str) -> CorpusEntry:
    """The registered adapter; ConfigError lists the valid names."""
    return CORPORA.get(name)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a CLI string option to the type of the adapter's default."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"option {name}={value!r}: expected a boolean (true/false)")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"option {name}={value!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"option {name}={value!r}: expected a number") from None
    return value


def check_options(entry: CorpusEntry, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options validated against ``prepare``'s keyword-only parameters (strings are converted)."""
    defaults = entry.option_defaults()
    unknown = sorted(set(options) - set(defaults))
    require(not unknown, "option", unknown, f"unknown for adapter {entry.name!r}; valid: {sorted(defaults) or 'none'}")
    checked = {k: _coerce(k, v, defaults[k]) for k, v in options.items()}
    if "min_duration" in checked:
        value = checked["min_duration"]
        require(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0, "option min_duration",
                value, "must be a number of seconds >= 0")
    return checked


DEMO_ADAPTER = "demo"  # a pipeline-config corpus generated by corpora.demo (options go to the generator)


def check_entry_options(adapter: str, options: Mapping[str, Any], *, where: str = "corpora") -> None:
    """Validate a pipeline-config corpus entry's adapter and options before any work starts.

    ConfigError (``ser`` exits 2) names the entry, the unknown option and the valid ones; for
    ``demo`` the options are the generator's keyword arguments.
    """
    if adapter == DEMO_ADAPTER:
        from ser_pipeline.corpora.demo import generate_demo_corpus

        params = inspect.signature(generate_demo_corpus).parameters.values()
        valid = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seed")
        unknown = sorted(set(options) - set(valid))
        require(not unknown, f"{where}.options", unknown, f"unknown for the demo corpus; valid: {valid}")
        return
    try:
        check_options(get_corpus(adapter), options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def prepare(adapter: str, corpus_dir: str | Path, **options: Any) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a corpus folder with a registered adapter: ``(rows, rejects)``; nothing is written."""
    entry = get_corpus(adapter)
    return entry.run(Path(corpus_dir), check_options(entry, options))


def ingest(
    adapter: str,
    corpus_dir: str | Path,
    name: str | None,
    workspace: Workspace,
    *,
    keep: list[str] | None = None,
    merge: dict[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Parse, validate and write the manifest ``<root>/manifests/<name>.parquet``; return the summary.

    ``name`` defaults to the adapter name. Raises CorpusLayoutError (missing folder, no file
    parses), ManifestError (every file rejected, duplicate ids); nothing is written then.
    """
    labels = LabelConfig.from_options(keep=keep, merge=merge)
    manifest_name = name or adapter
    require(_valid_name(manifest_name), "name", manifest_name, "use letters, digits, '.', '_' or '-'")
    entry = get_corpus(adapter)
    checked = check_options(entry, options)
    rows, rejects = entry.run(Path(corpus_dir), checked)
    rows, dropped = labels.apply(rows)
    rejects = sorted([*rejects, *dropped], key=lambda r: (r.path, r.reason))
    if not rows:
        reasons = sorted({r.reason.split(":")[0] for r in rejects})
        raise ManifestError(
            f"{corpus_dir}: every file was rejected ({len(rejects)} file(s); reasons: {', '.join(reasons)}); nothing written"
        )
    frame = to_frame(rows)
    summary = write_manifest(frame, rejects, manifest_name, workspace, source=str(Path(corpus_dir).resolve()))
    return {**summary, "adapter": adapter, "labels": labels.to_dict(), "options": checked}


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "._-" for c in name) and not name.startswith(".")


def load_adapters() -> Registry[CorpusEntry]:
    """Import every adapter module (they register themselves) and return the registry."""
    for module in ADAPTER_MODULES:
        importlib.import_module(module)
    return CORPORA


load_adapters()
