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
from collections.abc import Awaitable, Callable

__all__ = ["close_with_loop"]


def close_with_loop(close: Callable[[], Awaitable[object]]) -> asyncio.Task[None]:
    """Run ``close`` in the running loop once that loop cancels what is left in it.

    Keep the task: a loop holds only weak references to its tasks.
    """

    async def wait_then_close() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # Not when the loop was closed without a word and the task is collected:
            # there is no loop left to close anything in.
            with contextlib.suppress(Exception):
                await close()
            raise

    return asyncio.get_running_loop().create_task(
        wait_then_close(), name="coatcheck: close the store with its event loop"
    )
