"""Changes a request makes after its response has started: in a streaming body, a
background task, a dependency's teardown, or a websocket after its handshake."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ._audit import limited, once
from ._persist import _SaveCancelled
from .exceptions import SessionEndedError
from .session import _ChangeRefused

if TYPE_CHECKING:
    from ._persist import Persistence
    from .session import Session

logger = logging.getLogger("coatcheck")

# Said once for each route the app matched (else each path): each request of it drops
# its changes alike.
_LATE_UNSEALED = (
    "session changes made at {where} after the response started were dropped: the cookie "
    "store keeps the session in the cookie, which can no longer be sent; change it before "
    "responding (said once for this route)"
)
_LATE_DROPPED = (
    "session changes made at {where} after the response started were dropped: the session "
    "had no live record to continue (it was new, destroyed, or ended by another request), "
    "and a new one would need a cookie, which can no longer be sent; change it before "
    "responding (said once for this route)"
)


async def commit_late(
    persistence: Persistence, session: Session, status: int, route: tuple[Hashable, str]
) -> None:
    """Store what changed after the response started.

    The cookie can no longer change then (login() and regenerate() refuse), so
    nothing is created: a session that never had a record, or was destroyed,
    keeps none of it, and one that another request ended stays ended. The caller
    has brought its typed values up to date, and checked that the session is
    loaded and was changed, or may have been. ``route`` keys and names the request
    in a line about changes dropped (see ``middleware._route``).
    """
    if status >= 500:
        return
    if persistence._sealer is not None:
        nothing = not session._data and session._user_id is None
        if nothing and session._stored is None:
            return  # never had a cookie, and needs none
        if session._meta_changed or persistence.serializer.dumps(session._data) != session._raw:
            once(logger, (_LATE_UNSEALED, route[0]), _LATE_UNSEALED.format(where=route[1]))
        return
    if session._stored is None or session._id is None:
        # No live record under the cookie the browser holds.
        changed = session._modified or session._meta_changed
        if changed and (session._data or session._user_id is not None):
            once(logger, (_LATE_DROPPED, route[0]), _LATE_DROPPED.format(where=route[1]))
            session._modified = session._meta_changed = False  # dropped: said once
        if session._stored is None:
            return
        session._data = {}  # destroyed: the record is deleted, whatever came after
        session._user_id = None
    # Each refused change is withdrawn (see Session._withdraw): the rest are tried
    # again, as many times at most as there are changes to refuse.
    for _ in range(len(session._updates) + 1):
        try:
            await persistence.commit(session, status)
        except SessionEndedError:
            logger.info("the session was ended elsewhere; its late changes are dropped")
        except _SaveCancelled:
            # A client gone from a stream cancels its save: nothing more is stored.
            logger.info("a save of this request was cancelled; its later changes are dropped")
        except _ChangeRefused as exc:
            # Refused on a parallel request's value after the answer went out: no
            # 409 can say so any more, and the app's refusal is no server error.
            limited(logger, ("late refusal", id(persistence)), f"{exc}, at {route[1]}")
            continue
        return
