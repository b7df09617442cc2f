"""Fixtures shared by the store tests.

Every backend is listed in ``STORE_KINDS`` and built by ``build_store``; contract tests
only ever see the ``Store`` protocol, so adding Redis or PostgreSQL means adding a kind
here (plus whatever server fixture it needs), not touching the tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coatcheck._ids import new_public_id, new_session_id, store_key
from coatcheck.stores import SessionRecord, Store

from ..store_kinds import STORE_KINDS, build_store, fresh_store, unique_prefix

__all__ = [
    "HOUR",
    "NOW",
    "STORE_KINDS",
    "assert_upgraded",
    "fresh_store",
    "make_record",
    "unique_prefix",
]

# One clock for every test: stores take ``now`` from the caller. It sits near the real
# time so that backends which also hand deadlines to a server (Redis TTLs) agree with it.
NOW = float(int(time.time()))
HOUR = 3600.0


def make_record(**overrides: Any) -> SessionRecord:
    """A live anonymous record under a fresh key; any field can be overridden. With a
    ``user_id``, the login was made when the session was (as ``Session.login`` does)."""
    fields: dict[str, Any] = {
        "key": store_key(new_session_id()),
        "public_id": new_public_id(),
        "data": b'{"cart": [1, 2, 3]}',
        "user_id": None,
        "created_at": NOW - 60.0,
        "last_seen_at": NOW - 10.0,
        "expires_at": NOW + HOUR,
    }
    fields.update(overrides)
    if fields["user_id"] is not None:
        fields.setdefault("authenticated_at", fields["created_at"])
    return SessionRecord(**fields)


async def assert_upgraded(stores: Sequence[Store], old: SessionRecord) -> None:
    """Two workers starting together on a table made by an earlier release: both read
    the row written then (no address, and a login time that is its creation time), and
    a new record that fills the new columns is listed beside it."""
    loaded = await asyncio.gather(*(store.load(old.key, NOW) for store in stores))
    assert loaded == [old._replace(authenticated_at=old.created_at)] * 2
    newer = make_record(
        user_id=old.user_id,
        created_at=old.created_at + 1,
        ip_address="::1",
        authenticated_at=0.0,
        idle_timeout=600,
        absolute_timeout=3600,
    )
    await stores[1].save(newer)
    assert await stores[0].list_user(str(old.user_id), NOW) == [loaded[0], newer]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    built = build_store(request.param, tmp_path)
    try:
        yield built
    finally:
        await built.aclose()
