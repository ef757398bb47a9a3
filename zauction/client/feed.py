"""FeedWatcher: the live feed, gapless, from every node at once (the Clone pattern).

Each node publishes every committed event on PUB topic `feed/<auction>`, with a per-auction
sequence number `seq` (0 for the opening, 1.. for accepted bids, then the close). The
watcher subscribes to all nodes, so a leader change or a dead node loses nothing; it drops
duplicates by (auction, seq), and on a gap (or while idle, since the last events of a
burst may have been missed by a slow joiner) it asks a node for what it missed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import zmq

from brokerless.wire import WireError, unpack
from zauction.client.client import ClientError
from zauction.protocol import CLUSTER_TOPIC, FEED_PREFIX

if TYPE_CHECKING:
    from zauction.client.client import AuctionClient

RESYNC_IDLE_S = 1.0  # check for missed events after this long without any


class FeedWatcher:
    def __init__(self, client: AuctionClient, auction: str | None = None):
        self.client = client
        self.auction = auction
        self.sub = client._ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.seen: dict[str, int] = {}  # auction -> highest seq delivered
        self.leader_index = 0
        self.connected: set[str] = set()
        self.filled = 0  # events recovered by gap filling

    def __enter__(self) -> FeedWatcher:
        topic = FEED_PREFIX + self.auction.encode() if self.auction else FEED_PREFIX
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        if self.auction:
            self.sub.setsockopt(zmq.SUBSCRIBE, CLUSTER_TOPIC)
        self._connect_all()
        self._baseline()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sub.close(linger=0)

    def _connect_all(self) -> None:
        for server in self.client.servers:
            if server in self.connected:
                continue
            pub = self.client.pub_endpoint(server, timeout=0.5)
            if pub:
                self.sub.connect(pub)
                self.connected.add(server)

    def _baseline(self) -> None:
        """Events that happened before we subscribed are history, not feed."""
        try:
            auctions = self.client.auctions()
        except ClientError:
            return
        for a in auctions:
            if self.auction in (None, a["auction"]):
                self.seen[a["auction"]] = a["bids"] + (1 if a["state"] == "closed" else 0)

    def __iter__(self) -> Iterator[dict]:
        last_event = time.monotonic()
        while True:
            if self.sub.poll(200):
                last_event = time.monotonic()
                yield from self._on_message(self.sub.recv_multipart())
            elif time.monotonic() - last_event > RESYNC_IDLE_S:
                last_event = time.monotonic()
                if len(self.connected) < len(self.client.servers):
                    self._connect_all()
                yield from self._resync()

    def _on_message(self, frames: list[bytes]) -> Iterator[dict]:
        if len(frames) != 2:
            return
        try:
            batch = unpack(frames[1])
        except WireError:
            return
        for event in batch if type(batch) is list else ():
            if type(event) is dict:
                yield from self._on_event(event)

    def _on_event(self, event: dict) -> Iterator[dict]:
        if event.get("type") == "leader_changed":
            if event.get("index", 0) > self.leader_index:
                self.leader_index = event["index"]
                yield event
            return
        yield from self._deliver(event)

    def _deliver(self, event: dict) -> Iterator[dict]:
        auction, seq = event.get("auction"), event.get("seq")
        if type(auction) is not str or type(seq) is not int:
            return
        last = self.seen.get(auction, -1)
        if seq <= last:
            return  # a duplicate from another node
        if seq > last + 1 and last >= 0 or (last < 0 and seq > 1):
            yield from self._fill(auction, max(last, 0))
            if seq <= self.seen.get(auction, -1):
                return
        self.seen[auction] = seq
        yield event

    def _fill(self, auction: str, after: int) -> Iterator[dict]:
        try:
            missed = self.client.events_after(auction, after)
        except ClientError:
            return
        for event in missed:
            if event["seq"] > self.seen.get(auction, -1):
                self.seen[auction] = event["seq"]
                event.setdefault("term", None)
                self.filled += 1
                yield event

    def _resync(self) -> Iterator[dict]:
        try:
            auctions = self.client.auctions()
        except ClientError:
            return
        for a in auctions:
            name = a["auction"]
            if self.auction not in (None, name):
                continue
            total = a["bids"] + (1 if a["state"] == "closed" else 0)
            if total > self.seen.get(name, 0):
                yield from self._fill(name, self.seen.get(name, 0))
