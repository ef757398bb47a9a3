"""FeedWatcher: the live feed, gapless, from every node at once (the Clone pattern).

Each node publishes every committed event on PUB topic `feed/<auction>\0` (see
zauction.protocol.feed_topic). The watcher subscribes to all nodes, so a leader change or a
dead node loses nothing; what to deliver, drop or fetch again is decided by a FeedLog
(zauction.client.feedlog), and the watcher does the I/O it asks for: the SUB socket, and
`auctions` / `events` requests through a client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import zmq

from brokerless.wire import WireError, unpack
from zauction.client.errors import ClientError
from zauction.client.feedlog import RESYNC_IDLE_S, FeedLog
from zauction.protocol import CLUSTER_TOPIC, FEED_PREFIX, feed_topic

POLL_MS = 200  # how long one wait for a feed message lasts before the quiet check
PUB_HELLO_TIMEOUT_S = 0.5
RCVHWM = 100_000  # feed messages a slow consumer may fall behind before PUB drops some


class FeedSource(Protocol):
    """What the watcher needs from a client (AuctionClient is one)."""

    servers: list[str]

    @property
    def context(self) -> zmq.Context: ...

    def pub_endpoint(self, server: str, timeout: float = 1.0) -> str | None: ...

    def auctions(self, stale: bool = False) -> list[dict]: ...

    def events_after(self, auction: str, after_seq: int) -> list[dict]: ...


class FeedWatcher:
    def __init__(self, client: FeedSource, auction: str | None = None, *,
                 idle_s: float = RESYNC_IDLE_S):
        self.client = client
        self.auction = auction
        self.log = FeedLog(auction, idle_s)
        self.sub = client.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, RCVHWM)
        self.connected: set[str] = set()

    @property
    def seen(self) -> Mapping[str, int]:
        """auction -> the highest seq delivered."""
        return self.log.seen

    @property
    def filled(self) -> int:
        """Events recovered by gap filling."""
        return self.log.filled

    def __enter__(self) -> FeedWatcher:
        topic = feed_topic(self.auction) if self.auction else FEED_PREFIX
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        if self.auction:
            self.sub.setsockopt(zmq.SUBSCRIBE, CLUSTER_TOPIC)
        self._connect_all()
        auctions = self._auctions()
        if auctions is not None:
            self.log.baseline(auctions)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sub.close(linger=0)

    def __iter__(self) -> Iterator[dict]:
        self.log.heard(time.monotonic())
        while True:
            if self.sub.poll(POLL_MS):
                self.log.heard(time.monotonic())
                yield from self._on_message(self.sub.recv_multipart())
            elif self.log.resync_due(time.monotonic()):
                if len(self.connected) < len(self.client.servers):
                    self._connect_all()
                yield from self._resync()

    def _connect_all(self) -> None:
        for server in self.client.servers:
            if server in self.connected:
                continue
            pub = self.client.pub_endpoint(server, timeout=PUB_HELLO_TIMEOUT_S)
            if pub:
                self.sub.connect(pub)
                self.connected.add(server)

    def _on_message(self, frames: list[bytes]) -> Iterator[dict]:
        if len(frames) != 2:
            return
        try:
            batch = unpack(frames[1])
        except WireError:
            return
        for event in batch if type(batch) is list else ():
            yield from self.log.offer(event)
            yield from self._fill_gaps()

    def _resync(self) -> Iterator[dict]:
        auctions = self._auctions()
        if auctions is not None:
            self.log.resync(auctions)
            yield from self._fill_gaps()

    def _fill_gaps(self) -> Iterator[dict]:
        for gap in self.log.gaps():
            try:
                missed = self.client.events_after(gap.auction, gap.after_seq)
            except ClientError:
                yield from self.log.skip_gap(gap.auction)
                continue
            yield from self.log.fill(gap.auction, missed if type(missed) is list else ())

    def _auctions(self) -> list[Any] | None:
        try:
            auctions = self.client.auctions()
        except ClientError:
            return None
        return auctions if type(auctions) is list else None
