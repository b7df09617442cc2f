"""Keeping an open WebSocket in step with its session.

A socket outlives the request that opened it: without a check, a user who logs out
elsewhere, or whose sessions an administrator ends, keeps a live connection. So at the
first message after each ``websocket_recheck`` seconds, either way, the session is
looked up again: a socket whose session ended is closed (1008). Messages from the client
count as use, as requests do (those ``SessionConfig.websocket_activity`` picks, when
given): the first one after the sliding expiry falls due writes it back, so an active
chat does not reach the idle timeout. The app's own sends do not: a
feed or a server's heartbeat on a tab nobody looks at must not keep its user signed in.
A session whose idle limit is shorter than two such intervals (a login may choose one)
is looked up at least twice per idle window, or its chat would outlast it.
"""

from __future__ import annotations

import contextlib
import logging
import time

from ._asgi import Message, Receive, Scope, Send
from ._audit import limited
from ._persist import Persistence
from .exceptions import StoreError
from .session import Session

logger = logging.getLogger("coatcheck")

# Seconds after the socket was closed for its session during which an app that waits
# in receive() may still send without an error: its server reports the disconnect once
# the client answers the close, uvicorn within its close timeout. One that waits for a
# peer that vanished (hypercorn) would leave a task that pushes on its own pushing into
# the void: past this, its sends fail as after any close.
QUIET_AFTER_CLOSE = 10.0


class SocketClosed(OSError):
    """What a send gets once the socket was closed because its session ended, unless the
    app waits in ``receive()``, which reports the disconnect: as from a server whose
    client went away. Starlette turns it into ``WebSocketDisconnect``, so a handler that
    only pushes stops instead of sending into the void for ever."""


async def close_socket(send: Send, code: int, reason: str) -> None:
    """Close a socket with ``code``, or with 1000 where the server lets an app close only
    with 1000 or 3000-4999 (Daphne). A client already gone is told nothing more."""
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:
        with contextlib.suppress(Exception):  # gone: the app is told so all the same
            await send({"type": "websocket.close", "code": 1000, "reason": reason})


class SocketWatch:
    """One per WebSocket connection whose app may touch the session."""

    __slots__ = (
        "_checked",
        "_due",
        "_interval",
        "_persistence",
        "_scope",
        "_send",
        "_session",
        "closed",
        "closed_at",
        "receiving",
    )

    def __init__(
        self,
        persistence: Persistence,
        session: Session,
        interval: int,
        send: Send,
        scope: Scope,
    ) -> None:
        self._persistence = persistence
        self._session = session
        self._scope = scope
        self._interval = interval
        self._send = send
        self._checked = persistence.now()
        self._due = 0.0  # when the stored record, as last looked up, needs a refresh
        self.closed = False
        self.closed_at = 0.0  # time.monotonic() when it was closed
        self.receiving = 0  # the app's receive() calls waiting for the server

    async def ended(self, *, use: bool) -> bool:
        """True once the session has ended elsewhere, after closing the socket. ``use``:
        the message is the client's, which counts as use of the session."""
        if self.closed:
            return True
        session = self._session
        if not session._loaded:
            return False
        found = self._scope.get("session")
        if found is not session and isinstance(found, Session):
            # A mounted app's own coatcheck took the socket over: its session, not this
            # one, is the socket's, and its own watch keeps it in step.
            return False
        persistence, stored = self._persistence, session._stored
        now = persistence.now()
        # A client's message is use: once a refresh is due, it writes it back, or the
        # session would end up to an interval early, not a tenth of its idle window.
        if now < self._checked + min(self._interval, session._lifetime().idle / 2) and (
            not use or stored is None or now < max(self._due, persistence.refresh_at(stored))
        ):
            return False
        self._checked = now  # before any await: one check per interval
        try:
            due = await persistence.recheck(session, refresh=use)
        except StoreError as exc:
            # An outage is not a logout: the socket stays, and the next interval asks again.
            # A line a minute at most: every open socket asks at every interval.
            limited(
                logger, "recheck", f"could not recheck a websocket's session: {exc}", per_minute=1
            )
            return False
        finally:
            # A slow store must not make the next message due for a check at once.
            self._checked = persistence.now()
        if due is not None:
            self._due = due
            return False
        self.closed, self.closed_at = True, time.monotonic()
        await close_socket(self._send, 1008, "session ended")
        return True

    def quiet(self) -> bool:
        """Whether a send of the app's, after the socket was closed for it, goes without
        an error: while the app waits in receive() for the disconnect (see
        ``QUIET_AFTER_CLOSE``), as when a client goes away."""
        return bool(self.receiving) and time.monotonic() - self.closed_at < QUIET_AFTER_CLOSE

    def receive(self, receive: Receive) -> Receive:
        """``receive``, which ends the socket for the app once its session has ended."""

        activity = self._persistence.config.websocket_activity

        async def watched() -> Message:
            self.receiving += 1
            try:
                message = await receive()
            finally:
                self.receiving -= 1
            if message["type"] == "websocket.receive" and await self.ended(
                use=activity is None or activity(message)
            ):
                return {"type": "websocket.disconnect", "code": 1008}
            return message

        return watched
