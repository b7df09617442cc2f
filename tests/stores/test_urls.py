"""Choosing a store by URL, and the errors a mistyped URL gets."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from coatcheck import store_from_url
from coatcheck.exceptions import ConfigurationError
from coatcheck.stores import MemoryStore, SQLiteStore, Store
from coatcheck.stores._redact import redact
from coatcheck.stores._redis_url import RedisClient, client_from_url
from coatcheck.stores.redis import RedisStore

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
        ("rediss://cache:6380/0?ssl=true", "ssl_ca_certs"),  # what it takes instead
    ],
)
def test_unknown_option_is_named(url: str, option: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as caught:
        store_from_url(url)

    assert option in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem",
        "redis+cluster://127.0.0.1:7000?ssl_cert_reqs=required",
        "redis+sentinel://127.0.0.1:26379/main?ssl_check_hostname=no",
        "unix:///run/redis.sock?ssl_certfile=/c.pem",
    ],
)
def test_tls_options_without_tls_fail_at_start_up(url: str) -> None:
    """redis-py would take them and fail at every command, a 503 that never ends."""
    with pytest.raises(ConfigurationError, match="need TLS: use rediss://"):
        store_from_url(url)


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
@pytest.mark.parametrize("scheme", ["rediss", "rediss+cluster", "rediss+sentinel"])
def test_a_certificate_file_that_is_not_there_fails_at_start_up(
    tmp_path: Path, option: str, scheme: str
) -> None:
    """A mistyped path failed each connection as an outage: 503s, and the demo's
    "starting anyway", for a mistake that waiting never cures."""
    missing = tmp_path / "ca.pem"
    url = f"{scheme}://127.0.0.1:6379/{'main' if 'sentinel' in scheme else '0'}"
    with pytest.raises(ConfigurationError, match=rf"\?{option}= names no file: .*ca\.pem"):
        store_from_url(f"{url}?{option}={missing}")


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
        "redis+sentinel://:hunter2@127.0.0.1:26379",  # no service name
        "redis+sentinel://:hunter2@127.0.0.1:26379/main/x",
        "redis+sentinel://:hunter2@127.0.0.1:26379/main/1?db=2",
        "redis+sentinel://:hunter2@127.0.0.1:26379/main/1/2",
        "redis://:hunter2@[::1",  # urlsplit itself refuses it
        "redis://hunter2@[::1]:x/0",  # a password given without a user name
        "redis://127.0.0.1:6379/0?password=hunter2&colour=blue",
        "redis:/:hunter2@127.0.0.1:6379",
        "postgresql://app@127.0.0.1/db?password=hunter2&timeout=abc",
        "postgresql://app:hunter2@[::1]5432/db",  # libpq quotes the whole malformed URI
        "postgresql:/app:hunter2@127.0.0.1/db",
        # Characters repr() escapes: the password must be masked before quoting.
        "cookie://u:hunter2\\@x",
        "sqlite://u:hunter2@x/a'b\".db",
        "sqlite://u:hunter2@x/a\tb.db",
        "sqlite://u:hunter2@x/a#b.db",
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
        "redis://:hunt#er2@127.0.0.1:6379/0",
        "redis://user:hunt?er2@127.0.0.1:6379/0",
        "redis://:hunt/er2@127.0.0.1:6379/0",
        "redis+cluster://:hunt#er2@127.0.0.1:7000",
    ],
)
def test_a_password_that_needs_escaping_is_neither_shown_nor_guessed_at(url: str) -> None:
    """Cut at its "#", "?" or "/", a password is no longer where a URL keeps one: no
    piece of it may reach the message, which says how to write it instead."""
    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)
    message = str(caught.value)
    assert "hunt" not in message
    assert "er2" not in message
    assert "percent-encoded" in message or "host:port" in message


async def test_two_databases_named_at_once_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="the path and \\?db= name two databases"):
        store_from_url("redis://127.0.0.1:6379/3?db=5")
    store = store_from_url("redis://127.0.0.1:6379/3?db=3")  # the same one, twice: fine
    assert isinstance(store, RedisStore)
    assert store.client.connection_pool.connection_kwargs["db"] == 3


async def test_a_unix_socket_takes_its_password_as_redis_py_documents_it() -> None:
    store = store_from_url("unix:///run/redis.sock?db=2&password=hunter2")
    try:
        assert isinstance(store, RedisStore)
        kwargs = store.client.connection_pool.connection_kwargs
        assert (kwargs["password"], kwargs["db"]) == ("hunter2", 2)
    finally:
        await store.aclose()


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


# -- redacting URLs for display ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://secret@host:6379", "redis://***@host:6379"),  # a password without a user
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://admin:secret@host:6379/0?prefix=app", "redis://admin:***@host:6379/0?prefix=app"),
        ("redis://admin:se@cret@host", "redis://admin:***@host"),  # an unescaped @ in it
        (
            "redis://user:secret,2@host:6379/0",
            "redis://user:***@host:6379/0",
        ),  # RFC 3986 allows ","
        ("redis+cluster://:secret,2@h1:7000,h2:7001", "redis+cluster://:***@h1:7000,h2:7001"),
        # Credentials per host are not a Cluster URL's form: all before the last "@" is
        # its userinfo, as the client reads it, and all of it is hidden.
        (
            "redis+cluster://a:secret1@h1:7000,b:secret2@h2:7001,secret3@[::1]:7002",
            "redis+cluster://a:***@[::1]:7002",
        ),
        (
            "redis+cluster://admin:secret@h1:7000,h2:7001",
            "redis+cluster://admin:***@h1:7000,h2:7001",
        ),
        # libpq's, and redis-py's form for a socket: the password as a query option.
        (
            "postgresql://db/shop?sslmode=require&password=secret&PassWord=secret",
            "postgresql://db/shop?sslmode=require&password=***&PassWord=***",
        ),
        ("unix:///run/redis.sock?db=0&password=secret", "unix:///run/redis.sock?db=0&password=***"),
        ("postgresql://db/shop?sslpassword=secret", "postgresql://db/shop?sslpassword=***"),
        ("postgresql://db/shop?pass%77ord=secret", "postgresql://db/shop?pass%77ord=***"),
    ],
)
def test_redact_masks_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "secret" not in redact(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://host:6379/0?prefix=app&timeout=2",
        "redis+cluster://h1:7000,h2:7001",
        "unix:///run/redis.sock?db=1",
        "sqlite:////var/lib/app/sessions.db",
        "memory://?max_entries=5",
        # A lone name in a PostgreSQL URL is the user: libpq never reads it as a password.
        "postgresql://app_user@db:5432/shop",
        "postgres://app_user@db/shop?sslmode=require",
    ],
)
def test_redact_leaves_a_url_without_credentials_alone(url: str) -> None:
    assert redact(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@[::1",
        "redis+cluster://u:secret@[::1:7000",
        "redis://user:sec/ret@host:6379",  # the "/" ends the network location early
        "redis://user:sec?ret@host:6379",
        # A slash short: no network location, the credentials land in the path.
        "redis:/:secret@127.0.0.1:6379",
        "postgresql:/app:secret@127.0.0.1/db?connect_timeout=2",
        # An "@", then "#", "?" or "/" in the password: its tail was shown after the
        # masked part, in errors, the demo's banner and revoke-all's question.
        "postgres://app:p@ss#secret@db/app",
        "postgresql://app:p@ss?secret@db/app",
        "redis://app:p@ss/secret@cache:6379/0",
        "redis://app:p@ss?secret@127.0.0.1:6379/0",
    ],
)
def test_redact_masks_an_unparseable_url_from_the_scheme_on(url: str) -> None:
    assert redact(url) == url.partition(":")[0] + "://***"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "dbname=app user=app password=secret host=db",
            "dbname=app user=app password=*** host=db",
        ),
        ("host=db PASSWORD = 'se cr\\'et' port=5432", "host=db PASSWORD = *** port=5432"),
        ("host=db sslpassword=secret", "host=db sslpassword=***"),
        ("sessions.db", "sessions.db"),
    ],
)
def test_redact_masks_the_password_of_a_string_that_is_no_url(text: str, shown: str) -> None:
    """libpq's keyword form, given where a URL goes, was quoted whole in the error."""
    assert redact(text) == shown


def test_a_store_url_error_never_quotes_a_keyword_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url("dbname=app user=app password=secret host=db.internal")
    assert "secret" not in str(caught.value)


# -- Redis client settings from the URL -------------------------------------------------


def connection_settings(client: RedisClient) -> dict[str, object]:
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs()
    return client.connection_pool.connection_kwargs


async def test_cluster_credentials_are_percent_decoded() -> None:
    url = "redis+cluster://us%40er:p%3Aw%40rd@127.0.0.1:7000,127.0.0.1:7001"

    client, _ = client_from_url(url, None)  # nothing connects until first use

    try:
        assert isinstance(client, RedisCluster)
        settings = connection_settings(client)
        assert (settings["username"], settings["password"]) == ("us@er", "p:w@rd")
        nodes = client.nodes_manager.startup_nodes.values()
        assert {
            (n.connection_kwargs["username"], n.connection_kwargs["password"]) for n in nodes
        } == {("us@er", "p:w@rd")}
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis+sentinel://127.0.0.1:26379/main", 0),
        ("redis+sentinel://127.0.0.1:26379/main/", 0),
        ("redis+sentinel://127.0.0.1:26379/main/3", 3),
        ("redis+sentinel://127.0.0.1:26379/main?db=4", 4),
    ],
)
async def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(
    url: str, db: int
) -> None:
    client, _ = client_from_url(
        url.replace("127.0.0.1:26379", "us%40er:p%3Aw@127.0.0.1:26379,[::1]:26380"), None
    )  # nothing connects until first use
    try:
        settings = connection_settings(client)
        assert settings["db"] == db
        assert client.connection_pool.service_name == "main"  # type: ignore[attr-defined]
        # The credentials are the master's: the Sentinels are asked without them.
        assert (settings["username"], settings["password"]) == ("us@er", "p:w")
        sentinels = [
            s.connection_pool.connection_kwargs
            for s in client.sentinels.sentinels  # type: ignore[attr-defined]
        ]
        assert [(s["host"], s["port"]) for s in sentinels] == [("127.0.0.1", 26379), ("::1", 26380)]
        for sentinel in sentinels:
            assert sentinel["password"] is None
            assert sentinel["socket_timeout"] == sentinel["socket_connect_timeout"] == 1.0
    finally:
        await client.aclose()


async def test_a_tls_sentinel_url_puts_sentinels_and_master_behind_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    client, _ = client_from_url(
        f"rediss+sentinel://127.0.0.1:26379/main?ssl_ca_certs={ca}&ssl_check_hostname=no",
        None,
    )
    try:
        (sentinel,) = [s.connection_pool for s in client.sentinels.sentinels]  # type: ignore[attr-defined]
        for pool in (client.connection_pool, sentinel):
            assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
            assert pool.connection_kwargs["ssl_check_hostname"] is False
            assert "SSL" in pool.connection_class.__name__, pool.connection_class
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost?timeout=inf",
        "redis://localhost?timeout=-1",
        "redis://localhost?timeout=3601",
        "redis://localhost?timeout=3600.001",
        "redis+cluster://127.0.0.1:7000?timeout=3601",
        "redis+cluster://127.0.0.1:7000?timeout=nan",
    ],
)
def test_timeout_out_of_bounds_in_the_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout") as caught:
        client_from_url(url, None)

    assert repr(url) in str(caught.value)


@pytest.mark.parametrize("seconds", [3601.0, math.inf, math.nan, 0.0, -1.0])
def test_timeout_keyword_out_of_bounds_is_a_configuration_error(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        client_from_url("redis://localhost?timeout=2", seconds)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost/0",
        "unix:///run/redis.sock",
        "redis+cluster://127.0.0.1:7000",
        "redis+sentinel://127.0.0.1:26379/main",
    ],
)
@pytest.mark.parametrize(("option", "seconds"), [("3600", 3600.0), ("0.05", 0.05)])
async def test_timeouts_within_bounds_reach_the_client(
    url: str, option: str, seconds: float
) -> None:
    clients = [
        client_from_url(f"{url}?timeout={option}", None)[0],
        client_from_url(url, seconds)[0],
    ]
    try:
        for client in clients:
            settings = connection_settings(client)
            assert settings["socket_timeout"] == seconds
            assert settings["socket_connect_timeout"] == seconds
    finally:
        for client in clients:
            await client.aclose()


def test_reprs_say_which_store_and_never_its_password(tmp_path: Path) -> None:
    """A store shows up in logs and debuggers; redis-py's client repr, and a PostgreSQL
    connection string, would carry the password."""
    from coatcheck.stores.postgres import PostgresStore

    shown = {
        repr(store_from_url("redis://:s3cret@127.0.0.1:1/0?prefix=shop")): (
            "<RedisStore prefix='shop' on a Redis server>"
        ),
        repr(PostgresStore("postgresql://app:s3cret@127.0.0.1/db", table="web.sessions")): (
            "<PostgresStore table='web.sessions'>"
        ),
        repr(PostgresStore("host=127.0.0.1 password=s3cret")): (
            "<PostgresStore table='coatcheck_sessions'>"
        ),
        repr(SQLiteStore(tmp_path / "s.db", table="web")): (
            f"<SQLiteStore {str(tmp_path / 's.db')!r} table='web'>"
        ),
        repr(MemoryStore(max_entries=5)): "<MemoryStore 0 of at most 5 records>",
    }
    for text, expected in shown.items():
        assert text == expected
        assert "s3cret" not in text


def test_an_installed_package_serves_a_scheme_of_its_own(store_plugin: None) -> None:
    store = store_from_url("example://shop/sessions?pool=4")
    assert type(store).__name__ == "ExampleStore"
    assert store.url == "example://shop/sessions?pool=4"  # type: ignore[attr-defined]
    # Built-in schemes are coatcheck's own, whatever a package claims.
    assert isinstance(store_from_url("redis://127.0.0.1:1/0"), RedisStore)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("notastore://x", "object is not a session store: it does not implement load, save"),
        ("missing://x", r"the store for missing:// \(coatcheck_plugin_nowhere:from_url\) cannot"),
        ("unknown://x", "and those of installed packages that name them under 'coatcheck.stores'"),
        # Its own error, whatever its type, with the password masked where it quotes the
        # URL; the entry point's name matches whatever its case, as schemes do.
        (
            "unreachable://app:s3cret@db/x",
            r"^invalid store URL 'unreachable://app:\*\*\*@db/x': cannot reach "
            r"unreachable://app:\*\*\*@db/x$",
        ),
    ],
)
def test_a_scheme_no_package_serves_well_is_refused_clearly(
    store_plugin: None, url: str, error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        store_from_url(url)


@pytest.mark.parametrize("url", ["memory://host", "memory:///path", "memory://h/p?max_entries=3"])
def test_a_memory_url_with_a_place_is_refused(url: str) -> None:
    """It names no place: a host or path there is a mistake, as for cookie://."""
    with pytest.raises(ConfigurationError, match="memory store URLs look like memory://"):
        store_from_url(url)
