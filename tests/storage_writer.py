"""Helper process for the crash-consistency test in test_storage.py.

Usage: python storage_writer.py DIR SEED

Opens the store in DIR with durability ALWAYS, continues the log after whatever it holds,
and appends numbered entries in batches of 1-4 for ever. After each save() returns it
prints every index of that batch, one per line, and flushes: a printed index has been
acknowledged as durable. The test kills this process with SIGKILL at a random moment.
"""

from __future__ import annotations

import random
import sys

from brokerless.storage import Durability
from brokerless.storage.sqlite import SqliteStorage
from brokerless.types import Entry, HardState

NODE_ID, CLUSTER_ID = "writer", "crash-test"
TERM = 1
MAX_INDEX = 1_000_000  # a runaway writer stops on its own even if nobody kills it


def payload(index: int) -> bytes:
    """The data of entry `index`, so that the test can check every byte it reads back."""
    return (f"entry {index};" * 10).encode()


def main(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    store = SqliteStorage.open(directory, NODE_ID, CLUSTER_ID, Durability.ALWAYS)
    state = store.load()
    next_index = state.entries[-1].index + 1 if state.entries else 1
    while next_index <= MAX_INDEX:
        batch = range(next_index, next_index + rng.randint(1, 4))
        entries = [Entry(TERM, index, payload(index)) for index in batch]
        store.save(HardState(TERM, NODE_ID, batch[-1]), entries)
        sys.stdout.write("".join(f"{index}\n" for index in batch))
        sys.stdout.flush()
        next_index = batch[-1] + 1
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
