"""``max_sessions_per_user``: counting a user's sessions when one gets a new ID, and
ending the oldest, or refusing the login, past the limit.

Checked only when a session gets a new ID (a login, ``regenerate()``), so it costs
nothing per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .exceptions import SessionEndedError, SessionLimitError

if TYPE_CHECKING:
    from ._persist import Persistence
    from .session import Session
    from .stores.base import SessionRecord


async def evict_oldest(
    persistence: Persistence,
    session: Session,
    user_id: str,
    replaced: SessionRecord | None,
    key: str,
    logged_in: bool,
    now: float,
) -> None:
    """Past the limit, end the user's oldest sessions.

    Logins racing at the limit must agree on who stays, or each would end the other:
    the newest by login time, then by key, stay. A login that is not among them was
    overtaken by one that is (which may have ended it already), and ends with a 409
    rather than a cookie for nothing; an anonymous session it replaced is written back,
    so the browser keeps its cart. A session given a new ID without a login always stays.
    """
    limit = persistence.config.max_sessions_per_user
    assert limit is not None
    records = sorted(await persistence.live_records(user_id, now), key=_age)
    if logged_in and all(record.key != key for record in records):
        await _overtaken(persistence, session, replaced)
    excess = len(records) - limit
    if excess <= 0:
        return
    # Racing logins each end the same sessions; the newest alone reports them.
    reports = not logged_in or records[-1].key == key
    if not logged_in:
        records = [record for record in records if record.key != key]
    ended = records[:excess]
    for record in ended:
        await persistence.store.delete(record.key)
    if any(record.key == key for record in ended):
        await _overtaken(persistence, session, replaced)
    if reports:
        for record in ended:
            await persistence.emit(session, "evicted", record.user_id, record.public_id)


async def at_limit(
    persistence: Persistence, user_id: str, replaced: str | None, key: str | None = None
) -> bool:
    """Whether a login as ``user_id`` that replaces the session stored under
    ``replaced`` would take the user past the limit; one stored under the login's own
    ``key`` already (an import's twin) is this session."""
    limit = persistence.config.max_sessions_per_user
    assert limit is not None
    records = await persistence.live_records(user_id, persistence.now())
    if replaced is not None and any(record.key == replaced for record in records):
        # A login again on one of the user's own sessions (to confirm the password)
        # adds no device, even to a user above a limit lowered since.
        return False
    return sum(record.key not in (replaced, key) for record in records) >= limit


async def undo_past_limit(
    persistence: Persistence,
    session: Session,
    user_id: str,
    replaced: SessionRecord | None,
    key: str,
    now: float,
) -> None:
    """End a login that went past the limit after all, and refuse it.

    Logins racing the check before their saves can each pass it. Each one counts again
    once stored, and leaves if it sees more than the limit. The last of any survivors
    to be stored saw every other, so together they never pass the limit. At worst, two
    racing logins are both refused and their users try again.

    The browser keeps the session it had (see :func:`_give_back`).
    """
    limit = persistence.config.max_sessions_per_user
    assert limit is not None
    if len(await persistence.live_records(user_id, now)) <= limit:
        return
    await persistence.store.delete(key)
    await _give_back(persistence, replaced)
    session._stored = None
    await persistence.emit(session, "login_refused", user_id, "")
    raise SessionLimitError(limit)


async def _overtaken(
    persistence: Persistence, session: Session, replaced: SessionRecord | None
) -> None:
    """Refuse a login that a parallel one pushed out of the user's last place."""
    await _give_back(persistence, replaced)
    session._stored = None
    raise SessionEndedError("a parallel login of this user took the last place")


async def _give_back(persistence: Persistence, replaced: SessionRecord | None) -> None:
    """Write back the anonymous session a refused login replaced, with its cart. One
    that was logged in stays ended, as a "log out everywhere" meanwhile may have meant
    it to."""
    if replaced is not None and replaced.user_id is None:
        await persistence.store.save(replaced)


def _age(record: SessionRecord) -> tuple[float, str]:
    """Oldest first, ties broken the same way in every process."""
    return record.created_at, record.key
