"""Storage throughput: entries/s per durability policy at batch sizes 1 and 100.

Each save carries `batch` entries of 100-byte payloads plus a hard state, like a Ready on a
busy leader. Every cell is the median of `--runs` runs, each on a fresh store.

    python scripts/bench_storage.py [--dir DIR] [--runs 3] [--saves 1000]

The numbers depend on the disk under --dir (fsync cost): run it where the data will live.
"""

from __future__ import annotations

import argparse
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from brokerless.storage import Durability, MemoryStorage, Storage
from brokerless.storage.sqlite import SqliteStorage
from brokerless.types import Entry, HardState

PAYLOAD = bytes(range(100))
BATCH_SIZES = (1, 100)


def entries_per_second(store: Storage, batch: int, saves: int) -> float:
    """Time `saves` saves of `batch` entries each into an empty store."""
    index = 0
    started = time.perf_counter()
    for _ in range(saves):
        entries = [Entry(1, index + offset, PAYLOAD) for offset in range(1, batch + 1)]
        index += batch
        store.save(HardState(1, "n1", index), entries)
    elapsed = time.perf_counter() - started
    store.close()
    return batch * saves / elapsed


def measure(label: str, directory: Path, batch: int, saves: int, runs: int) -> float:
    results = []
    for run in range(runs):
        if label == "memory":
            store: Storage = MemoryStorage()
        else:
            store = SqliteStorage(directory / f"{label}-{batch}-{run}", Durability(label))
        results.append(entries_per_second(store, batch, saves))
    return statistics.median(results)


def saves_for(batch: int, saves: int) -> int:
    """Fewer saves at batch 100 keep every cell's run time comparable."""
    return saves if batch == 1 else max(1, saves // 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to create stores (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--saves", type=int, default=1000, help="saves per run at batch 1")
    args = parser.parse_args()
    print("$ python " + shlex.join(sys.argv))
    with tempfile.TemporaryDirectory(dir=args.dir) as temporary:
        directory = Path(temporary)
        print(f"stores in {directory}, sqlite {sqlite3.sqlite_version}, median of {args.runs}")
        print(
            f"{'durability':<10}" + "".join(f"{f'batch {b} (entries/s)':>24}" for b in BATCH_SIZES)
        )
        for label in ("always", "batch", "off", "memory"):
            cells = [
                measure(label, directory, batch, saves_for(batch, args.saves), args.runs)
                for batch in BATCH_SIZES
            ]
            print(f"{label:<10}" + "".join(f"{cell:>24,.0f}" for cell in cells))


if __name__ == "__main__":
    main()
