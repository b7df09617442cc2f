"""Choosing a store by URL, and the errors a mistyped URL gets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from coatcheck import store_from_url
from coatcheck.exceptions import ConfigurationError
from coatcheck.stores import MemoryStore, SQLiteStore, Store

from .conftest import NOW, make_record

pytestmark = pytest.mark.anyio


async def test_memory_url() -> None:
    store = store_from_url("memory://")

    assert isinstance(store, MemoryStore)
    assert isinstance(store, Store)
    assert store.max_entries == 10_000


async def test_memory_url_with_max_entries() -> None:
    store = store_from_url("memory://?max_entries=5")

    assert isinstance(store, MemoryStore)
    assert store.max_entries == 5
    records = [make_record() for _ in range(6)]
    for record in records:
        await store.save(record)
    assert await store.count(NOW) == 5


async def saves_into(store: Store, path: Path) -> None:
    """The store works and its data lands in ``path``."""
    record = make_record()
    try:
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()
    assert await anyio.Path(path).is_file()


async def test_sqlite_url_with_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = store_from_url("sqlite:///relative.db")

    assert isinstance(store, SQLiteStore)
    await saves_into(store, tmp_path / "relative.db")


async def test_sqlite_url_with_relative_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "var").mkdir()
    monkeypatch.chdir(tmp_path)

    store = store_from_url("sqlite:///var/sessions.db")

    await saves_into(store, tmp_path / "var" / "sessions.db")


async def test_sqlite_url_with_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "abs" / "path.db"
    target.parent.mkdir()
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")

    store = store_from_url(url)

    assert isinstance(store, SQLiteStore)
    assert store.path == target
    await saves_into(store, target)
    assert list(elsewhere.iterdir()) == []


async def test_sqlite_url_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    store = store_from_url("sqlite:///s.db?busy_timeout=2&table=web_sessions")

    assert isinstance(store, SQLiteStore)
    assert store.busy_timeout == 2.0
    assert store.table == "web_sessions"
    await saves_into(store, tmp_path / "s.db")


async def test_sqlite_url_fractional_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = store_from_url("sqlite:///s.db?busy_timeout=0.25")

    assert isinstance(store, SQLiteStore)
    assert store.busy_timeout == 0.25
    await store.aclose()


@pytest.mark.parametrize(
    "url", ["redis-ish://localhost", "foo://", "postgresql-x://db/sessions", "sessions.db", ""]
)
def test_unknown_scheme_lists_the_supported_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    message = str(caught.value)
    assert repr(url) in message
    assert "memory://" in message
    assert "sqlite://" in message


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("memory://?max_size=5", "max_size"),
        ("memory://?max_entries=5&ttl=3", "ttl"),
        ("sqlite:///s.db?timeout=3", "timeout"),
        ("sqlite:///s.db?busy_timeout=1&journal=wal", "journal"),
        ("sqlite:///s.db?busy_timout", "busy_timout"),  # a bare, misspelt option
    ],
)
def test_unknown_option_is_named(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as caught:
        store_from_url(url)

    assert option in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/x.db",
        "sqlite://localhost/x.db",
        "sqlite:///",
        "sqlite://",
        "sqlite:/tmp/x.db",  # one slash: it would open the relative path tmp/x.db
        "sqlite:x.db",
        "sqlite:///a#b.db",  # a fragment: it would open the file "a"
        "sqlite:///a.db#anchor",
        "sqlite:////tmp/a#b.db?busy_timeout=1",
    ],
)
def test_malformed_sqlite_url_shows_the_right_form(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    message = str(caught.value)
    assert repr(url) in message
    assert "sqlite:///relative.db" in message
    assert "sqlite:////abs/path.db" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://admin:hunter2@db.example/sessions",
        "memory://admin:hunter2@localhost?colour=blue",
        "memory://:hunter2@localhost?max_entries=lots",
        "redis://:hunter2@127.0.0.1:6379/notadb",
        "redis://user:hunter2@127.0.0.1:6379/0?colour=blue",
        "redis+cluster://:hunter2@127.0.0.1:7000,127.0.0.1:x",
        "redis+cluster://:hunter2@127.0.0.1:7000/2",
        "redis://:hunter2@[::1",  # urlsplit itself refuses it
        "redis://hunter2@[::1]:x/0",  # a password given without a user name
    ],
)
def test_errors_never_show_a_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///s.db?busy_timeout=soon",
        "sqlite:///s.db?busy_timeout=2s",
        "sqlite:///s.db?busy_timeout=",  # empty: must not silently mean the default
        # Parsed by float(), but then every request fails with a raw ValueError or
        # OverflowError when the store first connects.
        "sqlite:///s.db?busy_timeout=nan",
        "sqlite:///s.db?busy_timeout=inf",
    ],
)
def test_bad_busy_timeout_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    assert repr(url) in str(caught.value)


@pytest.mark.parametrize(
    "url", ["memory://?max_entries=many", "memory://?max_entries=0", "memory://?max_entries=1.5"]
)
def test_bad_max_entries_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)

    assert repr(url) in str(caught.value)


def test_bad_table_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="table") as caught:
        store_from_url("sqlite:///s.db?table=sessions;drop")

    assert isinstance(caught.value, ValueError)
