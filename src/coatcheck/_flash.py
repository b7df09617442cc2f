"""One-time messages for the next page a user sees: "Saved.", "Signed out of 2 devices."

They live in the session under one reserved key, and are added and taken through
:meth:`Session.modify`, so that a message flashed by a parallel request is neither lost
nor dropped unseen: each message carries a random id, and taking removes only the ids
it showed. (Two pages taken at the very same time may both show a message, as in any
framework that keeps them in the session.)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import Session

FLASH_KEY = "_flashes"
# Messages kept waiting at most: a route that flashes without a page to show them (a
# fragment, a JSON answer) must not grow the session past its size limit, which
# would refuse every later write of it. The oldest go first.
MAX_WAITING = 32


@dataclass(frozen=True, slots=True)
class Flash:
    """A message and its category (``"info"``, ``"error"``, or any name you style)."""

    message: str
    category: str


def add(session: Session, message: str, category: str) -> None:
    if not isinstance(message, str) or not isinstance(category, str):
        raise TypeError("a flash message and its category must be strings")
    # Kept as the text they hold: JSON stores no str subclass (a str Enum, Markup),
    # and the save would fail with the whole request's changes.
    entry = {
        "id": secrets.token_urlsafe(6),
        "category": str.__str__(category),
        "message": str.__str__(message),
    }
    _queue(session, entry)
    # Remembered past a save, which forgets its pending changes: a login as someone else
    # later in this request keeps this request's messages ("Welcome, bob").
    try:
        session._flashed.append(entry["id"])
    except AttributeError:  # the first of this request (a slot unset until then)
        session._flashed = [entry["id"]]


def _queue(session: Session, entry: dict[str, str]) -> None:
    session.modify(FLASH_KEY, lambda queue: [*_entries(queue), entry][-MAX_WAITING:], default=[])


def flashed_here(session: Session) -> list[dict[str, str]]:
    """This request's messages still waiting, to queue again after the data goes."""
    ids = set(getattr(session, "_flashed", ()))
    if not ids:
        return []
    return [entry for entry in _entries(session._data.get(FLASH_KEY)) if entry["id"] in ids]


def queue_again(session: Session, entries: list[dict[str, str]]) -> None:
    for entry in entries:
        _queue(session, entry)


def take(session: Session, category: str | None) -> list[Flash]:
    shown = [
        entry
        for entry in _entries(session.get(FLASH_KEY))
        if category is None or entry["category"] == category
    ]
    if not shown:
        return []
    from .session import _REMOVE  # here: the session module imports this one

    ids = {entry["id"] for entry in shown}

    def without_shown(queue: Any) -> Any:
        # An emptied queue goes; on a parallel save that added a message, this runs
        # again on its queue, which keeps that message.
        left = [entry for entry in _entries(queue) if entry["id"] not in ids]
        return left or _REMOVE

    session.modify(FLASH_KEY, without_shown, default=[])
    return [Flash(entry["message"], entry["category"]) for entry in shown]


def _entries(queue: Any) -> list[dict[str, str]]:
    """The well-formed messages of the stored queue: the key is the app's too, and a
    value it put there by mistake must not break every page."""
    if not isinstance(queue, list):
        return []
    return [
        entry
        for entry in queue
        if isinstance(entry, dict)
        and all(isinstance(entry.get(field), str) for field in ("id", "category", "message"))
    ]
