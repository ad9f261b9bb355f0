"""What checked reads cost: a whole feature set read as training loads it, with and without checks.

``python -m benchmarks.reads <store folder> [--digest D] [--repeat N]`` reads every item
of a set with :meth:`FeatureSet.read_many` (checksum of every item) and with the same bulk read
minus the checks (one span per batch, float32 slices: the read path before checks existed),
alternating the two ``N`` times in one run, page cache warm. Prints the median seconds of each
and the overhead ``checked / unchecked - 1``. Also times :meth:`FeatureSet.check` over every
item (what a no-op ``ser featurize`` now pays before reusing items), and the training load
(:func:`ser_pipeline.data.load_table`: read, cast, pack into one tensor) from the checked set and
from the unchecked read, alternated; ``load_overhead_pct`` is the figure the 5% budget applies to.
On a shared machine the two timings are noisy; ``crc_s`` times the checksums alone over every
item and ``crc_share_of_load_pct`` states them as a share of the unchecked load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from typing import Any

import numpy as np

from feature_store.store import FeatureSet, FeatureStore


def unchecked_read_many(fset: FeatureSet, keys: list[tuple[str, str]], *, as_stored: bool = False) -> list[np.ndarray]:
    """The bulk read without checksums (baseline): ``(C, F, T_i)`` float32 each (``as_stored``: as
    :meth:`FeatureSet.read_many`, the stored dtype)."""
    items = [fset._item(sha, variant) for sha, variant in keys]
    by_batch: dict[str, list[int]] = defaultdict(list)
    for pos, item in enumerate(items):
        by_batch[item["batch"]].append(pos)
    out: list[Any] = [None] * len(items)
    for batch, positions in by_batch.items():
        lo = min(items[p]["offset"] for p in positions)
        hi = max(items[p]["offset"] + items[p]["frames"] for p in positions)
        block = np.asarray(fset._array(batch)[:, :, lo:hi], dtype=None if as_stored else np.float32)
        for p in positions:
            start = items[p]["offset"] - lo
            out[p] = block[:, :, start : start + items[p]["frames"]].copy()
    return out


class UncheckedSource:
    """A FeatureSource reading ``fset`` without checks (the baseline of the training load)."""

    def __init__(self, fset: FeatureSet) -> None:
        self.fset = fset

    def read_many(self, keys: list[tuple[str, str]], *, as_stored: bool = False) -> list[np.ndarray]:
        return unchecked_read_many(self.fset, keys, as_stored=as_stored)


def _load_rows(fset: FeatureSet) -> Any:
    """One row per stored item, with one class and speaker (load_table needs labels, not real ones)."""
    import pandas as pd

    index = fset.index()
    return pd.DataFrame({"utterance_id": index["utterance_id"], "sha256": index["sha256"],
                         "emotion": "x", "speaker": "s"}), sorted(index["variant"].unique())


def measure(fset: FeatureSet, repeat: int) -> dict[str, Any]:
    """Median seconds of checked and unchecked whole-set reads (alternated), and of ``check``."""
    from ser_pipeline.dataset.tables import load_table

    keys = fset.keys()
    rows, variants = _load_rows(fset)
    rows = rows.drop_duplicates("sha256") if variants == ["orig"] else rows
    times: dict[str, list[float]] = {"checked": [], "unchecked": [], "check_only": [], "load_checked": [], "load_unchecked": []}
    runs = {"checked": fset.read_many, "unchecked": lambda k: unchecked_read_many(fset, k), "check_only": fset.check,
            "load_checked": lambda k: load_table(fset, rows, ["x"], ["s"], variants=variants),
            "load_unchecked": lambda k: load_table(UncheckedSource(fset), rows, ["x"], ["s"], variants=variants)}
    for fn in runs.values():  # warm the page cache and zarr's metadata once
        fset.refresh()
        fn(keys)
    for _ in range(repeat):
        for name, fn in runs.items():
            fset.refresh()
            start = time.perf_counter()
            fn(keys)
            times[name].append(time.perf_counter() - start)
    from feature_store.writer import checksum

    parts = fset._read_checked([fset._item(*k) for k in keys])  # contiguous stored-dtype items
    crc_times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for part in parts:
            checksum(part)
        crc_times.append(time.perf_counter() - start)
    times["crc"] = crc_times
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "set": fset.digest, "items": len(keys), "frames": int(fset.index()["frames"].sum()), "repeat": repeat,
        "checked_s": round(med["checked"], 4), "unchecked_s": round(med["unchecked"], 4),
        "check_only_s": round(med["check_only"], 4),
        "overhead_pct": round(100 * (med["checked"] / med["unchecked"] - 1), 2),
        "load_checked_s": round(med["load_checked"], 4), "load_unchecked_s": round(med["load_unchecked"], 4),
        "load_overhead_pct": round(100 * (med["load_checked"] / med["load_unchecked"] - 1), 2),
        "crc_s": round(med["crc"], 4), "crc_share_of_load_pct": round(100 * med["crc"] / med["load_unchecked"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="feature store folder (<root>/features)")
    parser.add_argument("--digest", default=None, help="feature set digest (default: the largest set)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    store = FeatureStore(args.store)
    digests = [args.digest] if args.digest else store.digests()
    sets = [store.get_set(d) for d in digests]
    fset = max(sets, key=len)
    print(json.dumps(measure(fset, args.repeat), indent=2))


if __name__ == "__main__":
    main()
