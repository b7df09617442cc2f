"""A user's sessions seen as devices: listing them, and ending them from any one of them.

This is what the per-user index of every store is for; :class:`~coatcheck.Session`'s
``devices()`` and ``revoke*()`` methods are the way in.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ._limits import at_limit
from ._user_ids import user_text
from .exceptions import StoreFullError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .session import Session
    from .stores.base import SessionRecord, Store


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class Device:
    """One of a user's live sessions, as a device list shows it. Holds no secret."""

    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str
    remember: bool
    current: bool
    ip_address: str = ""  # where it was last saved from, with SessionConfig(record_ip=True)


def _check_supported(session: Session, what: str) -> None:
    """The cookie store refuses device lists even to nobody: code tried while logged
    out must fail as it will once someone is."""
    if session._persistence.stateless:
        from .stores.cookie import not_supported

        raise not_supported(what)


async def list_devices(session: Session) -> list[Device]:
    await session.load()
    _check_supported(session, "list")
    if session._user_id is None:
        return []
    current = session._stored.key if session._stored is not None else None
    persistence = session._persistence
    records = await persistence.live_records(session._user_id, persistence.now())
    return [
        Device(
            id=record.public_id,
            created_at=utc(record.created_at),
            last_seen_at=utc(record.last_seen_at),
            expires_at=utc(persistence.deadline(record)),
            user_agent=record.user_agent,
            remember=record.remember,
            current=record.key == current,
            ip_address=record.ip_address,
        )
        for record in records
    ]


async def can_login(session: Session, user_id: str) -> bool:
    user_id = user_text(user_id)  # as login() takes it
    persistence = session._persistence
    if persistence.config.at_session_limit != "refuse_login":
        return True
    await session.load()
    replaced = session._stored.key if session._stored is not None else None
    if replaced is None:
        # As the login would: the session of a login whose answer was lost is replaced.
        unheard = await persistence.unheard_login(session, user_id, persistence.now())
        replaced = unheard.key if unheard is not None else None
    return not await at_limit(persistence, user_id, replaced)


# How many times revoke() looks again for a device that moved to a new key meanwhile.
_REVOKE_PASSES = 5


async def revoke(session: Session, public_id: str) -> bool:
    await session.load()
    _check_supported(session, "end")
    user_id = session._user_id
    if user_id is None:
        await session._persistence.refuse_if_moved_away(session)
        return False
    persistence = session._persistence
    current = session._stored.key if session._stored is not None else None
    revoked, is_current = await end_device(
        persistence.store,
        lambda: persistence.live_records(user_id, persistence.now()),
        public_id,
        current,
        now=persistence.now,
    )
    if is_current:
        # Ended now, so that the event below is true. A parallel login of this browser
        # may have moved it (same public id, new key): then it is ended as any other is.
        # One a parallel logout ended was announced there, and is not found again.
        revoked = await persistence.end_own(session)
        if not revoked:
            revoked, _ = await end_device(
                persistence.store,
                lambda: persistence.live_records(user_id, persistence.now()),
                public_id,
                now=persistence.now,
            )
        session.destroy()
        # None: ended or moved by a parallel request, which announced it and gave the
        # browser its cookie; the commit leaves both alone, and a login after gets a 409.
        session._announced = True if revoked else None
    if revoked:
        await persistence.emit(session, "revoked", user_id, public_id)
    return revoked


def dead_record(record: SessionRecord, now: float) -> SessionRecord:
    """``record`` ended at ``now``, to write over the version read.

    Its deadline is the session's start, before any request's ``now`` (a store takes a
    save's ``last_seen_at`` for it): a parallel end that comes second finds it dead, and
    gives way, instead of merging onto it as onto a live session and ending it twice.
    """
    return record._replace(
        last_seen_at=now, expires_at=min(now, record.created_at), version=record.version + 1
    )


async def end_device(
    store: Store,
    listing: Callable[[], Awaitable[list[SessionRecord]]],
    public_id: str,
    current: str | None = None,
    *,
    now: Callable[[], float],
) -> tuple[bool, bool]:
    """End the session with ``public_id`` among ``listing()``: whether this call ended
    it (not a parallel request, which announced it), and whether it is ``current`` (the
    caller's own, left for it to end).

    A device given a new ID meanwhile (a login, ``regenerate()``) keeps its public id
    under a new key: the end then missed it, and the next pass finds it.
    """
    for _ in range(_REVOKE_PASSES):
        record = next((r for r in await listing() if r.public_id == public_id), None)
        if record is None:
            break
        if record.key == current:
            return True, True
        if await end_record(store, record, now()):
            return True, False
    return False, False


async def end_record(
    store: Store,
    record: SessionRecord,
    now: float,
    moved: Callable[[], Awaitable[bool]] | None = None,
) -> bool:
    """End ``record`` unless another request ended or moved it first: whether this
    call ended it. A dead record is written over the version read, so a parallel save
    gives way (an end wins), while a parallel end or login that got there first is seen.

    A full store (StoreFullError) refuses the dead record, which takes room: a delete,
    which frees it, ends the session then, since a logout or a revocation must not wait
    for room; ``moved``, asked after it, tells a parallel login's move from this end.
    """
    dead = dead_record(record, now)

    def overrule(base: SessionRecord) -> SessionRecord:
        return dead._replace(version=base.version + 1)

    try:
        if not await store.save(dead, expected_version=record.version, merge=overrule):
            return False
    except StoreFullError:
        await store.delete(record.key)
        return moved is None or not await moved()
    with suppress(StoreUnavailableError):  # dead already: this is tidying
        await store.delete(record.key)
    return True


async def revoke_user(session: Session, *, keep_current: bool, user_id: str | None = None) -> int:
    await session.load()
    _check_supported(session, "end")
    persistence = session._persistence
    if user_id is not None and user_id != session._user_id:
        # Someone else's: this session is not among them, and stays as it is. Its record
        # may be, when this request signed that user out or in as another: its commit
        # ends that record, which the new login must find to replace.
        stored = session._stored
        keep = stored.key if stored is not None and stored.user_id == user_id else None
        removed = await persistence.store.delete_user(user_id, keep=keep, now=persistence.now())
        if removed:
            await persistence.emit(session, "revoked", user_id, "", removed)
        return removed
    user_id = session._user_id
    if user_id is None:
        await persistence.refuse_if_moved_away(session)
        return 0
    stored = session._stored
    own = stored is not None and stored.user_id == user_id  # not a login of this request
    # The others first, this session kept for its own end below: a failure then has
    # ended nothing of this browser's.
    keep = stored.key if stored is not None and (own or keep_current) else None
    if keep is not None and keep_current:
        keep = await persistence.followed(session, keep, user_id)
    removed = await persistence.store.delete_user(user_id, keep=keep, now=persistence.now())
    ended: bool | None = None
    try:
        if own and not keep_current:
            # As revoke() ends it: counted once, in ``revoked``, even if no commit
            # follows (a closed websocket).
            ended = await persistence.end_own(session)
            if not ended:  # moved meanwhile by a login of this browser: ended here
                removed += await persistence.store.delete_user(user_id, now=persistence.now())
    finally:
        removed += bool(ended)
        if removed:
            await persistence.emit(session, "revoked", user_id, "", removed)
    if not keep_current:
        session.destroy()
        # None: ended or moved by a parallel request (see revoke()); False: not this
        # user's yet, and ended by the commit as a logout of whoever held it.
        session._announced = (True if ended else None) if own else False
    return removed
