"""The coordinator replicas behind one federation, as one ``grpc.Channel`` whose calls go to the current replica.

A silo is given every replica's ``host:port`` (``coordinator = ["a:50051", "b:50051"]`` in ``silo.toml``). Only
the leading replica binds its port (a standby binds it once it takes the store's lock), so an address that
answers UNAVAILABLE is one that does not serve right now: :class:`~coordinator.sdk.transport.Transport` then
calls :meth:`ReplicaChannel.advance` and retries on the next replica with its usual backoff.

Every service stub built on a :class:`ReplicaChannel` (the transport's :meth:`~coordinator.sdk.transport.
Transport.stub`) resolves the replica at *call* time, not when the stub was built, so the modes' stubs, kept for
the whole federation, follow a failover without being rebuilt.

Notes:
    Each replica has its own real channel, opened on first use and kept: switching back to a replica that led
    before costs no new handshake set-up. The channels' own reconnect backoff is capped by the caller
    (``grpc.max_reconnect_backoff_ms``), because gRPC's default grows to two minutes and a channel inside its
    backoff fails every call at once: a coordinator back after a restart would look dead for that long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

__all__ = ["ReplicaChannel", "replica_addresses"]


def replica_addresses(address: str | Sequence[str]) -> tuple[str, ...]:
    """The replicas' addresses as a tuple, from one ``host:port`` or a list of them.

    Raises:
        ValueError: no address, an empty one, or one listed twice.
    """
    addresses = (address,) if isinstance(address, str) else tuple(address)
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        raise ValueError("need at least one coordinator host:port, none empty")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"a coordinator address is listed twice: {', '.join(addresses)}")
    return addresses


class ReplicaChannel(grpc.Channel):
    """One ``grpc.Channel`` over the replicas' channels; every call goes to :attr:`current`.

    Args:
        addresses: the replicas' ``host:port``, tried in this order.
        open_channel: opens the real channel to one address (TLS and options decided by the caller).
    """

    def __init__(
        self, addresses: Sequence[str], open_channel: Callable[[str], grpc.Channel]
    ) -> None:
        self.addresses: tuple[str, ...] = replica_addresses(addresses)
        self._open = open_channel
        self._channels: dict[str, grpc.Channel] = {}
        self._index = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The address calls go to now."""
        return self.addresses[self._index]

    def channel(self) -> grpc.Channel:
        """The real channel to :attr:`current` (opened on first use)."""
        with self._lock:
            address = self.addresses[self._index]
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = self._open(address)
            return channel

    def advance(self, failed: str) -> str | None:
        """Move on from ``failed`` to the next replica; returns it, or ``None`` with a single address.

        Calls from several threads may fail on the same replica at once: only the first moves on, so one
        replica's failure never skips the next replica.
        """
        with self._lock:
            if len(self.addresses) == 1:
                return None
            if self.addresses[self._index] == failed:
                self._index = (self._index + 1) % len(self.addresses)
            return self.addresses[self._index]

    # grpc.Channel --------------------------------------------------------------------------------------
    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Routed(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Routed(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Routed(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Routed(self, "stream_stream", method, args, kwargs)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.channel().subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        for channel in list(self._channels.values()):
            channel.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def __enter__(self) -> ReplicaChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Routed:
    """A multi-callable that finds the current replica's own multi-callable when it is called."""

    def __init__(
        self,
        replicas: ReplicaChannel,
        kind: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._replicas = replicas
        self._kind = kind
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._cache: dict[int, Any] = {}

    def _target(self) -> Any:
        channel = self._replicas.channel()
        target = self._cache.get(id(channel))
        if target is None:
            factory = getattr(channel, self._kind)
            target = self._cache[id(channel)] = factory(self._method, *self._args, **self._kwargs)
        return target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().future(*args, **kwargs)
