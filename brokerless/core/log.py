"""The in-memory replicated log: entries after the latest snapshot.

The core keeps every unsnapshotted entry in memory; storage is its durable mirror.
Indexes start at 1. `offset` is the index the latest snapshot covers (0: none), so the
entry at index i lives at `entries[i - offset - 1]`.
"""

from __future__ import annotations

from collections.abc import Sequence

from brokerless.types import Entry


class RaftLog:
    __slots__ = ("offset", "offset_term", "entries", "unstable_from")

    def __init__(self, offset: int = 0, offset_term: int = 0, entries: Sequence[Entry] = ()):
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        # Entries at or after this index have not yet been handed out for persistence.
        self.unstable_from = self.last_index + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    @property
    def first_index(self) -> int:
        return self.offset + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if it is compacted away or absent."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index:
            return self.entries[index - self.offset - 1].term
        return None

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; lo must not be compacted."""
        lo = max(lo, self.first_index)
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (last_index, last_term) is at least as up to date as ours."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)

    def merge(self, entries: Sequence[Entry]) -> None:
        """Add a leader's entries, truncating our suffix from the first conflict.

        Entries already present with the same term are skipped, so a duplicated or
        reordered append never truncates what a later one added.
        """
        for pos, entry in enumerate(entries):
            have = self.term(entry.index)
            if have == entry.term:
                continue
            if have is not None or entry.index <= self.offset:
                self._truncate_from(entry.index)
            self.entries.extend(entries[pos:])
            return

    def _truncate_from(self, index: int) -> None:
        del self.entries[index - self.offset - 1 :]
        self.unstable_from = min(self.unstable_from, index)

    def take_unstable(self) -> list[Entry]:
        """Entries not yet handed out for persistence; marks them handed."""
        out = self.slice(self.unstable_from, self.last_index + 1)
        self.unstable_from = self.last_index + 1
        return out

    def hint_for(self, index: int, term: int) -> tuple[int, int]:
        """Our largest index <= `index` whose term is <= `term`, and that term.

        Used on both sides of fast backtracking: it skips every entry of a term the
        other side cannot have.
        """
        index = min(index, self.last_index)
        while index > self.offset:
            have = self.term(index)
            if have is not None and have <= term:
                return index, have
            index -= 1
        return self.offset, self.offset_term

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index` (covered by a snapshot)."""
        if index <= self.offset:
            return
        term = self.term(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Install a snapshot at (index, term): keep a matching suffix, else drop all."""
        if self.term(index) == term:
            self.compact(index)
            return
        self.entries = []
        self.offset, self.offset_term = index, term
        self.unstable_from = index + 1
