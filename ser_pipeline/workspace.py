"""The workspace root: where manifests, features and experiments live.

``--root DIR`` on the command line, else ``$SER_ROOT``, else ``./ser-data``::

    <root>/manifests/<name>.parquet         one row per utterance
    <root>/manifests/<name>.rejects.parquet files set aside, with reasons
    <root>/manifests/<name>.json            summary and digest
    <root>/features/                        the Zarr feature store
    <root>/experiments/<experiment-id>/     training outputs
    <root>/demo/                            the generated demo corpus
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "ser-data"
ROOT_ENV = "SER_ROOT"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        chosen = root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
        return cls(Path(chosen).expanduser().resolve())

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    @property
    def demo(self) -> Path:
        return self.root / "demo"

    def manifest_path(self, name: str) -> Path:
        return self.manifests / f"{name}.parquet"
