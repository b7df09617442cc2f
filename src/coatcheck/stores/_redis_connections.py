"""The connections of the redis-py clients a store builds from its URL.

Two changes to redis-py's own, mixed in ahead of whichever connection class the URL
asks for (TCP, TLS, a unix socket, a Sentinel's master and the Sentinels asked for it, a
Cluster's nodes):

- Commands are packed in C by hiredis, as redis-py's synchronous client already does.
  Its asyncio connections pack in Python, one join per argument: a save, one script
  call with twenty-odd arguments, spent about 12 µs there, against 1.5 µs in hiredis
  (which the ``redis`` extra installs).
- A connection is opened outside the request that happens to need it first: its socket
  keeps a copy of the context it was opened in (and of the one it last resumed reading
  in), and with it, for as long as the connection lives, that request's session.

A client handed to the store is left as it is.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, TypeVar

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError
from redis.utils import HIREDIS_AVAILABLE

from .._context import apart

if HIREDIS_AVAILABLE:
    import hiredis

C = TypeVar("C", bound=type[AbstractConnection])

_made: dict[type[Any], type[Any]] = {}


class _StoreConnection:
    """Mixed in ahead of a redis-py connection class (see the module's docstring)."""

    async def _connect(self) -> None:
        await apart(super()._connect())  # type: ignore[misc]  # the connection class's own
        # asyncio stops reading a socket whose buffered reply passes 128 KiB (the devices
        # of a user with many) and starts again from the request that reads it, whose
        # context the socket then keeps: it starts again in a context of its own.
        transport: Any = getattr(getattr(self, "_writer", None), "transport", None)
        resume = getattr(transport, "resume_reading", None)
        if resume is not None:
            empty = contextvars.Context()
            with contextlib.suppress(AttributeError):  # uvloop's keeps its own context
                transport.resume_reading = lambda: empty.run(resume)

    if HIREDIS_AVAILABLE:

        def pack_command(self, *args: Any) -> list[bytes]:
            first = args[0]
            # As redis-py does: a command name given with its subcommand ("CONFIG GET")
            # goes out as two arguments.
            if isinstance(first, str):
                if " " in first:
                    args = (*first.encode().split(), *args[1:])
            elif b" " in first:
                args = (*first.split(), *args[1:])
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
            # A bytearray, which redis-py takes and hiredis does not; or what neither
            # takes (None, a bool, a dict), refused with redis-py's own error.
            args = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args)
            try:
                return [hiredis.pack_command(args)]
            except TypeError as exc:
                raise DataError(f"cannot send {args[0]!r} to Redis: {exc}") from None


def store_connection(connection_class: C) -> C:
    """``connection_class`` with :class:`_StoreConnection` mixed in ahead of it."""
    if issubclass(connection_class, _StoreConnection):
        return connection_class
    made = _made.get(connection_class)
    if made is None:
        made = _made[connection_class] = type(
            connection_class.__name__, (_StoreConnection, connection_class), {}
        )
    return made  # type: ignore[return-value]


def own_connections(client: Any) -> None:
    """Make the connections ``client`` opens from now on :func:`store_connection`'s.

    A single node or a Sentinel's master has one pool; a Cluster client opens
    connections per node, with the class its nodes are given (those it knows already,
    and those it learns of later from the cluster's slot map).
    """
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.connection_class = store_connection(pool.connection_class)
        return
    # redis-py's own attributes, not its API: should a release rename them, the store
    # still works, with redis-py's connections as they are.
    with contextlib.suppress(AttributeError, TypeError):
        nodes = client.nodes_manager
        shared = nodes.connection_kwargs
        if "connection_class" in shared:
            shared["connection_class"] = store_connection(shared["connection_class"])
        for node in nodes.startup_nodes.values():
            node.connection_class = store_connection(node.connection_class)
