"""Session life-cycle events, for audit logs and integrations.

Hooks are callables, async or plain, the app registers with the middleware
(``SessionMiddleware(app, store=..., events=[hook])``). They run inline, in order, as
each event happens, or, for the events of a save, once that save is done (so a hook
may save the session itself): keep them quick, or hand the event to a queue. A hook
that raises is logged and skipped; it never breaks the request. Events name sessions by their
public id only, never by a credential.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger("coatcheck.events")

EventKind = Literal[
    "created",  # a new session was first stored
    "logged_in",  # login(): a new ID bound to a user
    "rotated",  # regenerate() without a login
    "login_refused",  # a login past max_sessions_per_user, with at_session_limit="refuse_login"
    "logged_out",  # destroy()/logout() of a stored session, or a login as someone else
    "revoked",  # revoke(), revoke_others() or revoke_all(); ``count`` sessions
    "evicted",  # ended for a login past max_sessions_per_user under "end_oldest"
    "expired",  # a stored session was presented after its deadline
    "csrf_rejected",  # an unsafe request failed the CSRF check
]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """What happened, to whom, and from which client: ``ip_address`` and ``user_agent``
    are those of the request that caused it (say, for a "new sign-in" notice), empty
    when unknown. Events are handed to hooks, never stored by coatcheck."""

    kind: EventKind
    at: float
    user_id: str | None = None
    session: str = ""  # the public id, when there is one
    path: str = ""
    count: int = 1
    ip_address: str = ""
    user_agent: str = ""


EventHook = Callable[[SessionEvent], Awaitable[None] | None]
"""An ``async def`` or a plain function: ``queue.put_nowait`` hands events on as they come."""


class EventBus:
    """Calls every hook for every event; a failing hook is logged, never raised."""

    def __init__(self, hooks: Sequence[EventHook] = ()) -> None:
        self.hooks = tuple(hooks)

    async def emit(self, event: SessionEvent) -> None:
        for hook in self.hooks:
            try:
                answer = hook(event)
                if inspect.isawaitable(answer):
                    await answer
            except Exception:
                logger.exception("session event hook %r failed on %r", hook, event.kind)
