"""Fixtures shared by the store tests.

Every backend is listed in ``STORE_KINDS`` and built by ``build_store`` (both in
``store_kinds.py``); contract tests only ever see the ``Store`` protocol, so adding a
backend means adding a kind there (plus whatever server fixture it needs), not touching
the tests. The records and the clock are the public kit's, ``coatcheck.store_contract``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from coatcheck.store_contract import HOUR, NOW, make_record
from coatcheck.stores import SessionRecord, Store

from ..store_kinds import STORE_KINDS, build_store, fresh_store, unique_prefix

__all__ = [
    "HOUR",
    "NOW",
    "STORE_KINDS",
    "assert_upgraded",
    "build_store",
    "fresh_store",
    "make_record",
    "unique_prefix",
]


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
