"""Connections that belong to an event loop, closed before that loop ends.

A socket opened in one event loop fails in any other, and a test suite runs each test
in a loop of its own, often without the app's lifespan, whose end would close the
store. asyncio.run, pytest's plugins and Starlette's TestClient all cancel the tasks
left in a loop as they end it: a task that waits for that closes the store's
connections in their own loop, and the next loop opens its own.

Several loops may use one store at the same time: a job thread that calls
``asyncio.run(store.delete_user(...))`` beside the loop serving requests, a worker's
thread pool, a ``TestClient``'s loop beside the test's. Each gets what it connects with
from :class:`PerLoop`, never another loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LoopWatch", "PerLoop"]

T = TypeVar("T")


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
        # The watchers of loops closed without a word (no asyncio.run(), no aclose()):
        # they will never run again, and each would keep its loop alive.
        for ended in [task for task in self._tasks.copy() if task.get_loop().is_closed()]:
            self._tasks.discard(ended)
        # In a context of its own, its callback too: one copied from the request it
        # starts in would keep that request's session alive for as long as the loop runs.
        empty = contextvars.Context()
        task = empty.run(
            loop.create_task,
            self._wait_then_close(loop),
            name="coatcheck: close the store with its event loop",
        )
        # Pending for good if its loop is closed without a word; collected then, as it
        # should be, without asyncio's report of a task destroyed while pending.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard, context=empty)

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        """The store was closed in ``loop`` by ``aclose()``: its watcher ends there and
        then, rather than stay pending until the loop or the store is collected (which
        asyncio reports as a task destroyed while pending). A later use watches anew."""
        self._watched.discard(loop)
        # A copy: loops in other threads add theirs meanwhile.
        for task in [task for task in self._tasks.copy() if task.get_loop() is loop]:
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


class PerLoop(Generic[T]):
    """What a store connects with, one for each event loop that uses it.

    ``make`` gives a new one on a loop's first use (``first``, if given, goes to the
    first loop); ``close``, if given, closes it as its loop ends. One closed never
    serves another loop: what a client made its own in a loop (redis-py's locks for a
    burst of calls) stays bound to that loop. A store that was handed its client or
    pool by the app makes the same one for every loop, and closes nothing.
    """

    __slots__ = ("_close", "_first", "_lock", "_make", "_of", "_watch")

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[object]] | None = None,
        first: T | None = None,
    ) -> None:
        self._make = make
        self._close = close
        self._first = first
        self._of: dict[asyncio.AbstractEventLoop, T] = {}
        self._lock = threading.Lock()  # loops in other threads enter and leave too
        self._watch = None if close is None else LoopWatch(self._closing)

    def here(self, loop: asyncio.AbstractEventLoop) -> T:
        """The one of ``loop``, the running loop."""
        found = self._of.get(loop)
        return found if found is not None else self._enter(loop)

    def _enter(self, loop: asyncio.AbstractEventLoop) -> T:
        with self._lock:
            for ended in [other for other in self._of if other.is_closed()]:
                del self._of[ended]  # ended without a word: left to the garbage collector
            found = self._of.get(loop)
            if found is None:
                found = self._first if self._first is not None else self._make()
                self._first = None
                self._of[loop] = found
        if self._watch is not None:
            self._watch.watch(loop)
        return found

    def leave(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """Forget the one of ``loop``, the running loop, which its caller closes: the
        next use there makes or takes another."""
        if self._watch is not None:
            self._watch.release(loop)
        with self._lock:
            return self._of.pop(loop, None)

    async def _closing(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            item = self._of.pop(loop, None)
        if item is not None and self._close is not None:
            await self._close(item)
