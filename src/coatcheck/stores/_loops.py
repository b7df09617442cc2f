"""Connections that belong to an event loop, closed before that loop ends.

A socket opened in one event loop fails in any other, and a test suite runs each test
in a loop of its own, often without the app's lifespan, whose end would close the
store. asyncio.run, pytest's plugins and Starlette's TestClient all cancel the tasks
left in a loop as they end it: a task that waits for that closes the store's
connections in their own loop, and the next loop opens its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable

__all__ = ["LoopWatch"]


class LoopWatch:
    """For each event loop a store is used in, one task that runs the store's ``close``
    for that loop once the loop cancels what is left in it."""

    __slots__ = ("_close", "_released", "_tasks", "_watched")

    def __init__(self, close: Callable[[asyncio.AbstractEventLoop], Awaitable[object]]) -> None:
        self._close = close
        self._watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()  # a loop holds its tasks weakly
        self._released: set[asyncio.Task[None]] = set()

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the store's part in ``loop``, the running one, as it ends; once."""
        if loop in self._watched:
            return
        self._watched.add(loop)
        task = loop.create_task(
            self._wait_then_close(loop), name="coatcheck: close the store with its event loop"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        """The store was closed in ``loop`` by ``aclose()``: its watcher ends there and
        then, rather than stay pending until the loop or the store is collected (which
        asyncio reports as a task destroyed while pending). A later use watches anew."""
        self._watched.discard(loop)
        for task in [task for task in self._tasks if task.get_loop() is loop]:
            self._released.add(task)
            task.cancel()

    async def _wait_then_close(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task in self._released:
                self._released.discard(task)  # closed already, by aclose()
                raise
            # Not when the loop was closed without a word and the task is collected:
            # there is no loop left to close anything in.
            self._watched.discard(loop)
            with contextlib.suppress(Exception):
                await self._close(loop)
            raise
