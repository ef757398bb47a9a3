"""FeedLog: the rules of a gapless live feed, with no socket and no clock (the Clone pattern).

Every node publishes every committed event, each auction's events numbered by `seq` (0 the
opening, 1..n the accepted bids, n+1 the close). A subscriber hears each event once per
node, late or never if PUB dropped it, so FeedLog decides what to deliver:

* an event whose seq is not above the last delivered for its auction is a duplicate;
* an event more than one above it is past a gap: it is held back, and `gaps()` says what to
  fetch (an `events` request, after_seq = the last seq delivered); `fill()` hands over the
  fetched events, which are delivered first, then the held ones that are still new;
* while the feed is quiet, `resync()` compares the cluster's counts with what was delivered,
  because the last events of a burst may never have reached a slow joiner;
* a fetched "snapshot" event (the missed bids are no longer retained) is delivered like any
  other: it carries the auction's state and the seq from which the next events follow;
* `leader_changed` events are kept in log order by their index.

The caller does the I/O and passes the time in: see zauction.client.feed.FeedWatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from zauction.auction.domain import last_feed_seq

RESYNC_IDLE_S = 1.0  # check for missed events after this long without any


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of `auction` after `after_seq` are missing: fetch them with events_after."""

    auction: str
    after_seq: int


class FeedLog:
    """What a feed subscriber has delivered, and what it still has to fetch.

    `auction`: the one auction watched, or None for all. `idle_s`: how long the feed may be
    quiet before resync_due() says to compare with the cluster's counts."""

    def __init__(self, auction: str | None = None, idle_s: float = RESYNC_IDLE_S) -> None:
        self.auction = auction
        self.idle_s = idle_s
        self.leader_index = 0  # the log index of the last leader change delivered
        self.filled = 0  # events recovered by gap filling
        self._seen: dict[str, int] = {}  # auction -> highest seq delivered
        self._gaps: dict[str, int] = {}  # auction -> after_seq still to fetch
        self._held: dict[str, list[dict]] = {}  # auction -> events waiting behind its gap
        self._heard_at: float | None = None

    @property
    def seen(self) -> Mapping[str, int]:
        """auction -> the highest seq delivered (read-only)."""
        return MappingProxyType(self._seen)

    def wants(self, auction: str) -> bool:
        return self.auction is None or self.auction == auction

    # --- what the cluster says it has ---

    def baseline(self, auctions: Iterable[Any]) -> None:
        """Start from the cluster's counts (`auctions` results): what happened before we
        subscribed is history, not feed."""
        for name, last in self._counts(auctions):
            self._seen[name] = last

    def resync(self, auctions: Iterable[Any]) -> list[Gap]:
        """Note a gap for every auction the cluster (`auctions` results) has more events of
        than were delivered; returns gaps()."""
        for name, last in self._counts(auctions):
            delivered = self._seen.get(name, 0)
            if last > delivered:
                self._gaps.setdefault(name, delivered)
        return self.gaps()

    def _counts(self, auctions: Iterable[Any]) -> Iterable[tuple[str, int]]:
        for summary in auctions:
            if (type(summary) is dict and type(summary.get("auction")) is str
                    and type(summary.get("bids")) is int and self.wants(summary["auction"])):
                yield summary["auction"], last_feed_seq(summary)

    # --- events heard on the feed ---

    def offer(self, event: Any) -> list[dict]:
        """One event heard from some node: the events to deliver now (none, it, or later)."""
        if type(event) is not dict:
            return []
        if event.get("type") == "leader_changed":
            return self._leader_changed(event)
        auction, seq = event.get("auction"), event.get("seq")
        if type(auction) is not str or type(seq) is not int or not self.wants(auction):
            return []
        if auction in self._gaps:
            self._held[auction].append(event)
            return []
        last = self._seen.get(auction, -1)
        if seq <= last:
            return []  # a duplicate from another node
        if _is_gap(last, seq):
            self._gaps[auction] = last  # -1 for an auction not seen: the fill starts at its opening
            self._held[auction] = [event]
            return []
        self._seen[auction] = seq
        return [event]

    def _leader_changed(self, event: dict) -> list[dict]:
        index = event.get("index")
        if type(index) is not int or index <= self.leader_index:
            return []  # heard from another node already, or older
        self.leader_index = index
        return [event]

    # --- filling gaps ---

    def gaps(self) -> list[Gap]:
        """What to fetch before the held events can go, oldest gap first."""
        return [Gap(auction, after) for auction, after in self._gaps.items()]

    def fill(self, auction: str, events: Iterable[Any]) -> list[dict]:
        """The answer to Gap(auction, ...)'s events_after: the new events among them (rebuilt
        events carry term None), then the held events still new."""
        out = []
        for event in events:
            seq = event.get("seq") if type(event) is dict else None
            if type(seq) is int and seq > self._seen.get(auction, -1):
                self._seen[auction] = seq
                self.filled += 1
                rebuilt = dict(event)
                rebuilt.setdefault("term", None)
                out.append(rebuilt)
        return out + self.skip_gap(auction)

    def skip_gap(self, auction: str) -> list[dict]:
        """The gap of `auction` could not be fetched: deliver what was held anyway (the
        missed events are lost to this subscriber)."""
        self._gaps.pop(auction, None)
        out = []
        for event in sorted(self._held.pop(auction, ()), key=lambda e: e["seq"]):
            if event["seq"] > self._seen.get(auction, -1):
                self._seen[auction] = event["seq"]
                out.append(event)
        return out

    # --- quiet periods (the caller's clock, in seconds) ---

    def heard(self, now: float) -> None:
        """Something arrived on the feed at `now`."""
        self._heard_at = now

    def resync_due(self, now: float) -> bool:
        """True once per `idle_s` of quiet: time to resync() with the cluster's counts."""
        if self._heard_at is None or now - self._heard_at > self.idle_s:
            due = self._heard_at is not None
            self._heard_at = now
            return due
        return False


def _is_gap(last: int, seq: int) -> bool:
    """Whether `seq` cannot follow `last` directly. An auction not seen yet (last -1) may
    start at its opening (0) or at its first bid (1): a missed opening alone is not worth a
    fetch, but when a fetch is needed anyway it asks from -1 and gets the opening too."""
    return seq > last + 1 if last >= 0 else seq > 1
