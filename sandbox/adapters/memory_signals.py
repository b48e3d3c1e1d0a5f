"""`InMemorySignals`: signals within one process, for the embedded (SQLite) setup, where one
instance is all there is, and for tests."""

from __future__ import annotations

import asyncio

from sandbox.adapters.channels import checked_channel, checked_payload
from sandbox.domain.ports import Signal, Signals, Subscription

# A reader this far behind loses what it has not read and gets a `missed` signal instead.
QUEUE_LIMIT = 1000


class _QueueSubscription(Subscription):
    def __init__(self, hub: InMemorySignals, channels: frozenset[str]) -> None:
        self._hub = hub
        self.channels = channels
        self._queue: asyncio.Queue[Signal] = asyncio.Queue(QUEUE_LIMIT)

    def deliver(self, signal: Signal) -> None:
        if self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(Signal(channel=signal.channel, payload="", missed=True))
        self._queue.put_nowait(signal)

    async def __anext__(self) -> Signal:
        return await self._queue.get()

    async def close(self) -> None:
        self._hub.subscriptions.discard(self)


class InMemorySignals(Signals):
    def __init__(self) -> None:
        self.subscriptions: set[_QueueSubscription] = set()

    async def publish(self, channel: str, payload: str) -> None:
        signal = Signal(checked_channel(channel), checked_payload(payload))
        for subscription in list(self.subscriptions):
            if channel in subscription.channels:
                subscription.deliver(signal)

    async def subscribe(self, *channels: str) -> Subscription:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        subscription = _QueueSubscription(self, frozenset(map(checked_channel, channels)))
        self.subscriptions.add(subscription)
        return subscription
