"""Keeping an open WebSocket in step with its session.

A socket outlives the request that opened it: without a check, a user who logs out
elsewhere, or whose sessions an administrator ends, keeps a live connection. So at the
first message after each ``websocket_recheck`` seconds, either way, the session is
looked up again: a socket whose session ended is closed (1008), and one whose session
lives counts as use, so an active chat does not reach the idle timeout.
"""

from __future__ import annotations

import logging

from ._asgi import Message, Receive, Send
from ._persist import Persistence
from .exceptions import StoreError
from .session import Session

logger = logging.getLogger("coatcheck")

_CLOSE: Message = {"type": "websocket.close", "code": 1008, "reason": "session ended"}


class SocketWatch:
    """One per WebSocket connection whose app may touch the session."""

    __slots__ = ("_due", "_interval", "_persistence", "_send", "_session", "closed")

    def __init__(self, persistence: Persistence, session: Session, interval: int, send: Send):
        self._persistence = persistence
        self._session = session
        self._interval = interval
        self._send = send
        self._due = persistence.now() + interval
        self.closed = False

    async def ended(self) -> bool:
        """True once the session has ended elsewhere, after closing the socket."""
        if self.closed:
            return True
        now = self._persistence.now()
        if now < self._due or not self._session._loaded:
            return False
        self._due = now + self._interval  # before any await: one check per interval
        try:
            live = await self._persistence.recheck(self._session)
        except StoreError as exc:
            # An outage is not a logout: the socket stays, and the next interval asks again.
            logger.warning("could not recheck a websocket's session: %s", str(exc))
            return False
        if live:
            return False
        self.closed = True
        await self._send(_CLOSE)
        return True

    def receive(self, receive: Receive) -> Receive:
        """``receive``, which ends the socket for the app once its session has ended."""

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive" and await self.ended():
                return {"type": "websocket.disconnect", "code": 1008}
            return message

        return watched
