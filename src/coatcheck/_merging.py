"""Merging a save that lost a race: this request's changes, applied again on top of
what a parallel request of the same session stored first.

Only the conflict path pays for this: the keys a request set, deleted or changed in
place are found by comparing with what it loaded, and values changed through
:meth:`Session.modify` are recomputed from the winner's value.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from .exceptions import SessionConflictError
from .session import _REMOVE, _ChangeRefused

if TYPE_CHECKING:
    from ._persist import Persistence
    from .session import Session, Update
    from .stores.base import Merge, SessionRecord


def adopt_merged(persistence: Persistence, session: Session, merged: dict[str, Any]) -> None:
    """Take what a merge stored into the session's own mapping, in place: a value
    the handler still holds (``cart = session["cart"]``) stays the session's where
    the merge kept it, so what the handler changes in it next is saved too."""
    data, encode = session._data, persistence.serializer.dumps
    for key in [key for key in data if key not in merged]:
        del data[key]
    for key, value in merged.items():
        if key not in data or encode({key: data[key]}) != encode({key: value}):
            data[key] = value
    if list(data) != list(merged):
        # In the stored order too: encoded again, it must match what was stored, or
        # reload() would find "unsaved" changes where there are none.
        for key in merged:
            data[key] = data.pop(key)


def merger(
    persistence: Persistence,
    session: Session,
    loaded: SessionRecord,
    record: SessionRecord,
    written: list[SessionRecord],
    updates: list[Update] | None = None,
    seen: list[SessionRecord] | None = None,
) -> Merge:
    """The merge a store calls with the winner of a race, for ``record``: a save of
    ``session`` that started from ``loaded``. Each result goes to ``written``; each
    winner merged onto, to ``seen``."""

    # This save's own changes, as it sends them (``record.data``, and the ``modify()``
    # calls made until then): not those another task of the request makes while it
    # awaits the store, which the next save stores.
    if updates is None:
        updates = list(session._updates)
    meta = session._meta_changed

    def merge(base: SessionRecord) -> SessionRecord:
        if seen is not None:  # the winners merged onto, latest last
            seen.append(base)
        encode = persistence.serializer.dumps
        try:
            merged = persistence.decode(base)
        except ValueError:
            # Written by a process this one cannot read (sealed under a key it does
            # not hold yet, mid-deploy): merged into nothing, it would be lost.
            raise SessionConflictError(
                f"session {base.public_id} was saved meanwhile with data this "
                "process cannot decode; nothing was written"
            ) from None
        original = persistence.decode(loaded)
        ours = persistence.serializer.loads(record.data)
        recomputed = {key for key, _, _ in updates}
        for key in original.keys() | ours.keys():
            if key in recomputed:
                continue
            if key not in ours:
                merged.pop(key, None)
            elif key not in original or encode({key: ours[key]}) != encode({key: original[key]}):
                merged[key] = ours[key]
        for key, change, default in updates:
            start = merged[key] if key in merged else copy.deepcopy(default)
            try:
                value = change(start)
            except Exception as exc:
                session._withdraw(key, original)
                raise _ChangeRefused(key, exc) from exc
            if value is _REMOVE:
                merged.pop(key, None)
            else:
                merged[key] = value
        fields = record if meta else base
        result = record._replace(
            data=encode(merged),
            user_id=fields.user_id,
            remember=fields.remember,
            created_at=fields.created_at,
            authenticated_at=fields.authenticated_at,
            idle_timeout=fields.idle_timeout,
            absolute_timeout=fields.absolute_timeout,
            expires_at=persistence.lifetime_of(fields).deadline(
                record.last_seen_at, fields.created_at
            ),
            version=base.version + 1,
        )
        written.append(result)
        return result

    return merge
