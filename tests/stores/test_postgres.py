"""What only the PostgreSQL store has to prove, on a real server: its URL, its table,
compare-and-set across separate pools (as separate workers have), revocation racing
rotation, and a server that stops, restarts or hangs under it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from coatcheck import ConfigurationError, StoreError, StoreUnavailableError, store_from_url
from coatcheck._ids import new_session_id, store_key
from coatcheck.stores import SessionRecord
from coatcheck.stores.postgres import PostgresStore

from ..certificates import make_certificates
from ..postgres_server import PostgresServer, PostgresServers
from .conftest import HOUR, NOW, assert_upgraded, make_record, unique_prefix

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stores(postgres: PostgresServer) -> AsyncIterator[list[PostgresStore]]:
    """Eight stores on one new table, each with its own pool: eight workers, in effect."""
    table = unique_prefix()
    built = [PostgresStore(postgres.url, table=table, max_connections=2) for _ in range(8)]
    try:
        yield built
    finally:
        for store in built:
            await store.aclose()


def test_from_url_keeps_its_own_options_and_passes_the_rest_to_libpq() -> None:
    url = (
        "postgresql://app:s3cret@db.internal:5433/web?table=web_sessions&timeout=3"
        "&max_connections=4&sslmode=require&application_name=shop"
    )
    store = store_from_url(url)
    assert isinstance(store, PostgresStore)
    assert (store.table, store.timeout, store.max_connections) == ("web_sessions", 3.0, 4)
    assert store.conninfo == (
        "postgresql://app:s3cret@db.internal:5433/web"
        f"?sslmode=require&application_name=shop&connect_timeout=3{TCP.format(9000)}"
    )
    # As written: decoded and encoded again, "%20" came back as "+", which libpq keeps.
    spaced = store_from_url("postgresql://db/web?options=-c%20search_path%3Dapp&timeout=3")
    assert isinstance(spaced, PostgresStore)
    assert spaced.conninfo == (
        f"postgresql://db/web?options=-c%20search_path%3Dapp&connect_timeout=3{TCP.format(9000)}"
    )
    assert conninfo_to_dict(spaced.conninfo)["options"] == "-c search_path=app"
    # libpq's own settings in the URL win over the store's defaults.
    short = store_from_url("postgres://db/web?connect_timeout=7&keepalives_idle=5")
    assert isinstance(short, PostgresStore)
    assert short.conninfo == (
        "postgres://db/web?connect_timeout=7&keepalives_idle=5&tcp_user_timeout=6000"
        "&keepalives_interval=10&keepalives_count=3"
    )
    assert (short.table, short.timeout) == ("coatcheck_sessions", 2.0)


# What every URL gets unless it says otherwise, for a given tcp_user_timeout.
TCP = "&tcp_user_timeout={}&keepalives_idle=30&keepalives_interval=10&keepalives_count=3"


@pytest.mark.parametrize("password", ["se#cret", "se?cret", "se#c?ret&x=1"])
def test_a_password_holding_a_hash_or_a_question_mark_reaches_libpq_as_written(
    password: str,
) -> None:
    """libpq ends the password at its "@"; cut at "#" or "?" as a generic URL is, then
    joined again, it lost its tail, or sent the database name "postgres&connect_timeout=2"."""
    store = store_from_url(
        f"postgresql://app:{password}@db.internal/shop?sslmode=require&timeout=3"
    )
    assert isinstance(store, PostgresStore)
    settings = conninfo_to_dict(store.conninfo)
    assert settings["password"] == password
    assert settings["dbname"] == "shop"
    assert (settings["sslmode"], settings["connect_timeout"]) == ("require", "3")
    assert store.timeout == 3.0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://u:s3cret@db/web?timeout=soon", "invalid option"),
        ("postgresql://u:s3cret@db/web?timeout=0", "timeout must be"),
        ("postgresql://u:s3cret@db/web?max_connections=0", "max_connections must be"),
        ("postgresql://u:s3cret@db/web?table=drop%20table", "not a plain SQL identifier"),
        ("postgresql://u:s3cret@db/web?table=pg_class", "not a plain SQL identifier"),
        ("postgresql://u:s3cret@db/web?table=a.b.c", "not a plain SQL identifier"),
        ("postgresql://u:s3cret@db/web?table=auth.", "not a plain SQL identifier"),
        (f"postgresql://u:s3cret@db/web?table={'t' * 56}", "longer than 55 characters"),
        ("postgresql://u:s3cret@db/web?sslmod=require", 'invalid URI query parameter: "sslmod"'),
        # Read by libpq only as it connects: every request would fail on it.
        ("postgresql://u:s3cret@db/web?sslrootcert=/no/such/ca.pem", "sslrootcert= names no file"),
        # libpq quotes the whole token around a bad escape, here the password.
        ("postgresql://u:s3cret%zz@db/web", "a value holds a % that is not followed"),
        # A malformed URI is quoted whole; the quote is shown with the password masked.
        ("postgresql://u:s3cret@[::1]5432/web", r"postgresql://u:\*\*\*@\[::1\]5432/web"),
    ],
)
def test_bad_options_fail_at_start_up_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        store_from_url(url)
    chain: BaseException | None = caught.value
    while chain is not None:  # nor in what the error carries along
        assert "s3cret" not in str(chain)
        chain = chain.__cause__ or chain.__context__


async def test_workers_starting_together_create_the_table_once(
    stores: list[PostgresStore], postgres: PostgresServer
) -> None:
    records = [make_record() for _ in stores]
    await asyncio.gather(*(store.save(r) for store, r in zip(stores, records, strict=True)))
    assert await stores[0].count(NOW) == len(stores)
    table = stores[0].table
    assert indexes_of(postgres, table) == [f"{table}_expires", f"{table}_pkey", f"{table}_user"]


def indexes_of(postgres: PostgresServer, table: str) -> list[str]:
    with postgres.connect() as db:
        rows = db.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY indexname", (table,)
        ).fetchall()
    return [name for (name,) in rows]


async def test_the_longest_table_name_allowed_still_gets_both_indexes(
    postgres: PostgresServer,
) -> None:
    table = unique_prefix() + "t" * (55 - len(unique_prefix()))
    store = PostgresStore(postgres.url, table=table)
    try:
        await store.save(make_record())
    finally:
        await store.aclose()
    assert indexes_of(postgres, table) == [f"{table}_expires", f"{table}_pkey", f"{table}_user"]


async def test_rows_hold_the_hash_of_the_id_never_the_id(
    stores: list[PostgresStore], postgres: PostgresServer
) -> None:
    session_id = new_session_id()
    await stores[0].save(make_record(key=store_key(session_id), user_id="alice"))
    with postgres.connect() as db:
        dump = db.execute(f'SELECT * FROM "{stores[0].table}"').fetchall()
    assert session_id not in repr(dump)
    assert dump[0][0] == store_key(session_id)


async def test_revoking_a_user_works_through_every_batch(postgres: PostgresServer) -> None:
    """A bot's million sessions in one statement outlasted the timeout: a batch at a
    time, each counted, until one finds nothing."""
    store = PostgresStore(postgres.url, table=unique_prefix(), purge_batch=5, purge_every=0)
    try:
        kept, *doomed = [make_record(user_id="bot") for _ in range(24)]
        for record in [kept, *doomed, make_record(user_id="alice")]:
            await store.save(record)
        await store.save(make_record(user_id="bot", expires_at=NOW - 1))

        assert await store.delete_user("bot", keep=kept.key, now=NOW) == 23

        assert await store.list_user("bot", NOW) == [kept]
        assert len(await store.list_user("alice", NOW)) == 1
    finally:
        await store.aclose()


async def test_purge_expired_works_through_every_batch_of_marks_of_moves(
    postgres: PostgresServer,
) -> None:
    """Logins leave a row for each key they moved: once its ten minutes are over, a
    purge removes every one, batch after batch, not only the first batch."""
    store = PostgresStore(postgres.url, table=unique_prefix(), purge_batch=2, purge_every=0)

    def rows() -> int:
        with postgres.connect() as db:
            return int(db.execute(f'SELECT count(*) FROM "{store.table}"').fetchone()[0])

    try:
        for _ in range(5):
            old = make_record(user_id=None)
            await store.save(old)
            await store.save(make_record(user_id="alice", last_seen_at=NOW), replaces=old.key)
        assert rows() == 10

        assert await store.purge_expired(NOW + 601) == 0  # marks are no sessions

        assert rows() == 5  # alice's five, still live
    finally:
        await store.aclose()


async def test_the_purge_a_save_runs_keeps_ahead_of_what_saves_create(
    postgres: PostgresServer,
) -> None:
    """One record per save, all expired by the next purge: one batch per purge would
    leave half behind for good; it runs more while they come back full, up to four."""
    store = PostgresStore(postgres.url, table=unique_prefix(), purge_every=10, purge_batch=5)
    store._saves = 0  # where in the cycle a store starts is random

    def rows() -> int:
        with postgres.connect() as db:
            return int(db.execute(f'SELECT count(*) FROM "{store.table}"').fetchone()[0])

    try:
        for live in range(1, 4):
            for _ in range(9):
                await store.save(make_record(last_seen_at=NOW - 2 * HOUR, expires_at=NOW - HOUR))
            await store.save(make_record(last_seen_at=NOW))  # the tenth save purges
            assert rows() == live
        store.purge_every = 0
        for _ in range(30):
            await store.save(make_record(last_seen_at=NOW - 2 * HOUR, expires_at=NOW - HOUR))
        store.purge_every = 1
        await store.save(make_record(last_seen_at=NOW))
        assert rows() == 3 + 31 - 20
    finally:
        await store.aclose()


async def test_without_create_table_a_missing_table_is_a_clear_error(
    postgres: PostgresServer,
) -> None:
    table = unique_prefix()
    store = PostgresStore(postgres.url, table=table, create_table=False)
    try:
        with pytest.raises(StoreError, match=f"no session table '{table}'"):
            await store.count(NOW)
    finally:
        await store.aclose()
    with postgres.connect() as db:
        assert db.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


def appended(record: SessionRecord, mark: str) -> SessionRecord:
    marks = [*json.loads(record.data)["marks"], mark]
    return record._replace(data=json.dumps({"marks": marks}).encode(), version=record.version + 1)


async def test_parallel_saves_from_separate_pools_lose_nothing(
    stores: list[PostgresStore],
) -> None:
    first = make_record(data=b'{"marks": []}')
    await stores[0].save(first)

    async def worker(store: PostgresStore, number: int) -> None:
        for step in range(10):
            mark = f"{number}.{step}"
            loaded = await store.load(first.key, NOW)
            assert loaded is not None
            saved = await store.save(
                appended(loaded, mark),
                expected_version=loaded.version,
                merge=lambda base, mark=mark: appended(base, mark),  # type: ignore[misc]
            )
            assert saved

    await asyncio.gather(*(worker(store, n) for n, store in enumerate(stores)))
    final = await stores[0].load(first.key, NOW)
    assert final is not None
    marks = json.loads(final.data)["marks"]
    assert sorted(marks) == sorted(f"{n}.{step}" for n in range(len(stores)) for step in range(10))
    assert final.version == 1 + len(marks)


async def revoke_while_rotating(stores: list[PostgresStore], user: str) -> None:
    devices = [make_record(user_id=user) for _ in range(6)]
    for device in devices:
        await stores[0].save(device)
    revoked = asyncio.Event()
    rotations = 0

    async def keep_rotating(store: PostgresStore, record: SessionRecord) -> None:
        # A device that logs in again and again: each save moves it to a new key.
        nonlocal rotations
        while True:
            moved = record._replace(key=store_key(new_session_id()), version=record.version + 1)
            if not await store.save(moved, replaces=record.key, expected_version=record.version):
                return  # its session is gone: revoked
            rotations += 1
            record = moved
            if revoked.is_set():
                raise AssertionError("a session rotated after the revocation had returned")

    rotating = [
        asyncio.ensure_future(keep_rotating(stores[1 + n % 7], device))
        for n, device in enumerate(devices)
    ]
    for _ in range(1000):  # until the devices are well under way
        if rotations >= 30:
            break
        await asyncio.sleep(0.001)
    live = await stores[0].delete_user(user, now=NOW)
    revoked.set()
    await asyncio.gather(*rotating)
    assert live == len(devices)
    assert await stores[0].list_user(user, NOW) == []


async def test_revoking_a_user_kills_sessions_that_rotate_meanwhile(
    stores: list[PostgresStore],
) -> None:
    # A lost race is a matter of timing: several rounds make one likely to show.
    for round_ in range(6):
        await revoke_while_rotating(stores, f"user-{round_}")
    assert await stores[0].count(NOW) == 0


async def test_ending_every_session_goes_on_past_a_batch_a_logout_cut_short(
    postgres: PostgresServer,
) -> None:
    """A logout on another worker holds a row of the first batch, then commits: the
    batch comes back short, which does not mean that no session is left."""
    table = unique_prefix()
    store = PostgresStore(postgres.url, table=table, purge_batch=2)
    try:
        for _ in range(6):
            await store.save(make_record())
        async with await psycopg.AsyncConnection.connect(postgres.url) as worker:
            row = await (await worker.execute(f'SELECT key FROM "{table}" LIMIT 1')).fetchone()
            assert row is not None
            await worker.execute(f'DELETE FROM "{table}" WHERE key = %s', (row[0],))
            ending = asyncio.ensure_future(store.delete_all(NOW))
            await asyncio.sleep(0.5)  # delete_all now waits for that row
            await worker.commit()
        assert await ending == 5
        assert await store.count(NOW) == 0
    finally:
        await store.aclose()


async def loaded_once_back(store: PostgresStore, key: str) -> SessionRecord | None:
    """The record, once the store reaches its server again by itself."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await store.load(key, NOW)
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the store did not recover within 15 s"
            await asyncio.sleep(0.1)


async def test_a_stopped_server_is_a_quick_503_and_the_store_recovers_by_itself(
    own_postgres: PostgresServer,
) -> None:
    store = PostgresStore(own_postgres.url, table=unique_prefix(), timeout=0.5, retry_after=3)
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        own_postgres.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable") as caught:
            await store.load(record.key, NOW)
        assert caught.value.retry_after == 3
        with pytest.raises(StoreUnavailableError):
            await store.save(make_record())
        assert time.monotonic() - started < 3
        own_postgres.start()
        # The data is on disk; the pool reconnects on its own within a few seconds.
        assert await loaded_once_back(store, record.key) == record
    finally:
        await store.aclose()


async def test_after_a_restart_the_first_read_does_not_fail_on_a_dead_connection(
    own_postgres: PostgresServer,
) -> None:
    store = PostgresStore(own_postgres.url, table=unique_prefix(), max_connections=4)
    try:
        record = make_record()
        await store.save(record)
        # Four connections in the pool, each of which the restart will leave dead.
        await asyncio.gather(*(store.load(record.key, NOW) for _ in range(20)))
        own_postgres.stop()
        own_postgres.start()
        assert await store.load(record.key, NOW) == record
        assert await store.save(record._replace(version=2), expected_version=1)
        assert await store.count(NOW) == 1
    finally:
        await store.aclose()


async def test_connections_made_while_the_server_was_read_only_do_not_outlive_it(
    own_postgres: PostgresServer,
) -> None:
    """Maintenance makes a database read-only and ends its connections; the pool's new
    ones take that default for good. Once it is writable again, writes must work again
    at once, not only after the pool's connections reach their hour's lifetime: each
    such connection is closed when refused, and the write tried once more on another,
    so a pool of two (with the one it makes meanwhile) refuses at most one more."""
    store = PostgresStore(own_postgres.url, table=unique_prefix(), max_connections=2)
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        with own_postgres.connect() as db:
            db.execute("ALTER DATABASE postgres SET default_transaction_read_only = on")
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        refusals = []
        for _ in range(5):  # the ended connections first, then read-only ones
            with pytest.raises(StoreUnavailableError) as refused:
                await store.save(make_record())
            refusals.append(str(refused.value))
            if "read-only" in refusals[-1]:
                break
        assert "read-only" in refusals[-1], refusals
        assert await store.load(record.key, NOW) == record  # reads go on meanwhile
        with own_postgres.connect() as db:
            db.execute("SET default_transaction_read_only = off")
            db.execute("ALTER DATABASE postgres RESET default_transaction_read_only")
        outcomes: list[bool | str] = []
        for _ in range(6):
            written = make_record()
            try:
                outcomes.append(await store.save(written))
            except StoreUnavailableError as exc:
                outcomes.append(str(exc))
        assert outcomes[1:] == [True] * 5, outcomes
        assert outcomes[0] is True or "read-only" in str(outcomes[0]), outcomes
        assert await store.load(written.key, NOW) == written
    finally:
        await store.aclose()


async def test_libpq_takes_the_tcp_settings_the_url_adds(postgres: PostgresServer) -> None:
    store = store_from_url(f"{postgres.url}?table={unique_prefix()}&timeout=1")
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(store.conninfo) as db:
        settings = db.info.get_parameters()
    assert settings["tcp_user_timeout"] == "5000"
    assert (settings["keepalives_idle"], settings["keepalives_count"]) == ("30", "3")
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_a_hung_server_is_a_503_within_the_timeout(own_postgres: PostgresServer) -> None:
    store = PostgresStore(own_postgres.url, table=unique_prefix(), timeout=0.5)
    try:
        record = make_record(expires_at=NOW + HOUR)
        await store.save(record)
        own_postgres.signal_all(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="no answer in time"):
                await store.load(record.key, NOW)
            assert time.monotonic() - started < 2
        finally:
            own_postgres.signal_all(signal.SIGCONT)
        assert await loaded_once_back(store, record.key) == record
    finally:
        await store.aclose()


@pytest.mark.parametrize("rotated", [False, True], ids=["update", "login"])
async def test_a_save_that_answered_503_never_lands_later(
    postgres: PostgresServer, rotated: bool
) -> None:
    """A lock held past the timeout (a migration, ``VACUUM FULL``) makes a save wait. The
    503 must mean it did not happen: landing later, it would count a retried change twice,
    or move a login's session away from the cookie the client still holds."""
    store = PostgresStore(postgres.url, table=unique_prefix(), timeout=0.5)
    try:
        stored = make_record(data=b'{"cart":["book"]}')
        await store.save(stored)
        changed = stored._replace(data=b'{"cart":["book","ink"]}', version=2)
        if rotated:
            changed = changed._replace(key=store_key(new_session_id()), user_id="alice")
        with postgres.connect() as locker, locker.transaction():
            locker.execute(f"LOCK TABLE {store.table} IN SHARE MODE")  # reads pass, writes wait
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="no answer in time"):
                await store.save(changed, replaces=stored.key, expected_version=1)
            assert time.monotonic() - started < 2.5
        await asyncio.sleep(0.5)  # long enough for a write the server still held to land
        assert await store.load(stored.key, NOW) == stored
        if rotated:
            assert await store.load(changed.key, NOW) is None
        assert await store.save(changed, replaces=stored.key, expected_version=1)  # the retry
        assert await store.load(changed.key, NOW) == changed
    finally:
        await store.aclose()


async def test_an_unreachable_server_never_shows_the_password() -> None:
    from ..redis_servers import free_port

    store = store_from_url(f"postgresql://app:s3cret@127.0.0.1:{free_port()}/web?timeout=0.5")
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.count(NOW)
        assert "s3cret" not in str(caught.value)
    finally:
        await store.aclose()


async def test_an_unreachable_server_is_named_as_the_cause_of_the_outage() -> None:
    from ..redis_servers import free_port

    store = store_from_url(f"postgresql://app:s3cret@127.0.0.1:{free_port()}/web?timeout=0.5")
    try:
        with pytest.raises(StoreUnavailableError, match=r"cannot connect: .*Connection refused"):
            await store.count(NOW)
    finally:
        await store.aclose()


async def test_options_libpq_refuses_are_a_store_error_not_an_outage(
    postgres: PostgresServer,
) -> None:
    """``sslmode=bogus`` passes the URL's syntax check, but no connection can ever be made
    with it: the cause is told, and not as an outage to wait out."""
    store = store_from_url(f"{postgres.url}?sslmode=bogus&timeout=0.5&table={unique_prefix()}")
    try:
        with pytest.raises(StoreError, match='invalid sslmode value: "bogus"') as caught:
            await store.count(NOW)
        assert not isinstance(caught.value, StoreUnavailableError)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("user", "database", "complaint"),
    [
        ("nobody_here", "postgres", 'role "nobody_here" does not exist'),
        ("postgres", "nowhere", 'database "nowhere" does not exist'),
    ],
    ids=["role", "database"],
)
async def test_a_server_that_refuses_who_connects_is_a_store_error_not_an_outage(
    postgres: PostgresServer, user: str, database: str, complaint: str
) -> None:
    """No wait lets in a role or a database that is not there: an error to fix, logged
    as one, and no 503 that promises the outage will pass."""
    url = f"postgresql://{user}@127.0.0.1:{postgres.port}/{database}"
    await refused_for_good(f"{url}?timeout=0.5", complaint)


async def test_tls_required_of_a_server_without_it_is_a_store_error_not_an_outage(
    postgres: PostgresServer,
) -> None:
    """Certificates and TLS set up wrong stay wrong however long one waits."""
    await refused_for_good(f"{postgres.url}?sslmode=require&timeout=0.5", "does not support SSL")


async def refused_for_good(url: str, complaint: str) -> None:
    """The store at ``url`` fails with ``complaint``, as an error and not an outage."""
    store = store_from_url(f"{url}&table={unique_prefix()}")
    try:
        with pytest.raises(StoreError, match=complaint) as caught:
            await store.count(NOW)
        assert not isinstance(caught.value, StoreUnavailableError)
    finally:
        await store.aclose()


async def test_a_read_only_server_says_a_replica_url_never_passes(
    postgres: PostgresServer,
) -> None:
    """Writes refused by a read-only server are an outage, since a standby being
    promoted becomes writable; the answer says what to do if it never does."""
    read_only = "options=-c%20default_transaction_read_only%3Don"
    table = unique_prefix()
    writable = store_from_url(f"{postgres.url}?table={table}")
    try:
        await writable.count(NOW)  # the table exists, as on a replica of the primary
    finally:
        await writable.aclose()
    store = store_from_url(f"{postgres.url}?{read_only}&timeout=0.5&table={table}")
    try:
        assert await store.load(make_record().key, NOW) is None  # reads work
        with pytest.raises(StoreUnavailableError, match="names a read-only replica"):
            await store.save(make_record())
    finally:
        await store.aclose()


async def test_a_role_that_may_not_create_the_table_is_told_how_to_make_it(
    postgres: PostgresServer,
) -> None:
    role = f"app_{unique_prefix()}"
    async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    url = f"postgresql://{role}@127.0.0.1:{postgres.port}/postgres"
    store = store_from_url(f"{url}?timeout=0.5&table={unique_prefix()}")
    try:
        with pytest.raises(StoreError, match=r"store\.schema_sql\(\)") as caught:
            await store.count(NOW)
        assert "permission denied for schema public" in str(caught.value)
        assert "create_table=False" in str(caught.value)
    finally:
        await store.aclose()


async def test_a_unix_socket_that_is_not_there_yet_is_an_outage_that_passes(
    own_postgres: PostgresServer,
) -> None:
    """libpq says "connection is bad" for a missing socket too: that one is an outage,
    and the store connects once the server is up, with no restart of the app."""
    server = own_postgres
    url = (
        f"postgresql://postgres@/postgres?host={server.directory}&port={server.port}"
        f"&timeout=0.5&table={unique_prefix()}"
    )
    server.stop()
    store = store_from_url(url)
    try:
        with pytest.raises(StoreUnavailableError, match="No such file or directory"):
            await store.count(NOW)
        server.start()
        assert await loaded_once_back(store, make_record().key) is None
    finally:
        await store.aclose()


async def test_a_store_on_the_apps_own_pool_leaves_the_pool_to_the_app(
    postgres: PostgresServer,
) -> None:
    from psycopg_pool import AsyncConnectionPool

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        postgres.url, kwargs={"autocommit": True}, min_size=1, max_size=2, open=False
    )
    await pool.open()
    try:
        store = PostgresStore(pool=pool, table=unique_prefix())
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        await store.aclose()
        assert not pool.closed
        assert await store.count(NOW) == 1  # the same pool, still usable
    finally:
        await pool.close()
    with pytest.raises(ConfigurationError, match="not both"):
        PostgresStore(postgres.url, pool=pool)


async def test_a_table_in_a_schema_of_its_own(postgres: PostgresServer) -> None:
    schema = unique_prefix()
    with postgres.connect() as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    store = store_from_url(f"{postgres.url}?table={schema}.sessions")
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        assert await store.list_user("alice", NOW) == [record]
    finally:
        await store.aclose()
    with postgres.connect() as db:
        found = db.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = %s ORDER BY 2",
            (schema,),
        ).fetchall()
    assert found == [
        ("sessions", "sessions_expires"),
        ("sessions", "sessions_pkey"),
        ("sessions", "sessions_user"),
    ]


async def test_the_schema_sql_makes_a_table_the_store_can_use_without_ddl(
    postgres: PostgresServer,
) -> None:
    table = unique_prefix()
    store = PostgresStore(postgres.url, table=table, create_table=False)
    try:
        with postgres.connect() as db:
            db.execute(store.schema_sql())  # as a migration would
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresServer, Path]]:
    """A server that also speaks TLS, with the folder of the certificates it uses."""
    certificates = tmp_path_factory.mktemp("pg-tls")
    make_certificates(certificates)
    servers = PostgresServers(tls=certificates)
    try:
        yield servers.server(), certificates
    finally:
        servers.stop()


async def test_sessions_travel_over_verified_tls(
    tls_postgres: tuple[PostgresServer, Path],
) -> None:
    server, certificates = tls_postgres
    name = unique_prefix()
    url = (
        f"{server.url}?sslmode=verify-full&sslrootcert={certificates / 'ca.pem'}"
        f"&application_name={name}&table={name}"
    )
    store = store_from_url(url)
    try:
        record = make_record()
        await store.save(record)
        assert await store.load(record.key, NOW) == record
        with server.connect() as db:  # the store's own connection, seen by the server
            encrypted = db.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = %s",
                (name,),
            ).fetchall()
        assert {ssl for (ssl,) in encrypted} == {True}  # every connection of the store
    finally:
        await store.aclose()


async def test_a_server_whose_certificate_cannot_be_verified_is_refused(
    tls_postgres: tuple[PostgresServer, Path],
) -> None:
    server, certificates = tls_postgres
    url = f"{server.url}?sslmode=verify-full&sslrootcert={certificates / 'other-ca.pem'}"
    store = store_from_url(f"{url}&timeout=0.5&table={unique_prefix()}")
    try:
        # No wait makes the certificate acceptable: an error to fix, as Redis's is.
        with pytest.raises(StoreError, match="certificate verify failed") as refused:
            await store.save(make_record())
        assert not isinstance(refused.value, StoreUnavailableError)
    finally:
        await store.aclose()
    assert isinstance(store, PostgresStore)
    with server.connect() as db:
        assert db.execute("SELECT to_regclass(%s)", (store.table,)).fetchone() == (None,)


async def test_requests_that_wait_for_a_connection_never_made_are_told_why(
    tls_postgres: tuple[PostgresServer, Path],
) -> None:
    """The pool gives up on its first connection and closes while other requests wait
    for it: each is told the cause, not only that the pool is closed."""
    server, certificates = tls_postgres
    url = f"{server.url}?sslmode=verify-full&sslrootcert={certificates / 'other-ca.pem'}"
    store = store_from_url(f"{url}&timeout=0.5&table={unique_prefix()}")
    try:
        for _ in range(2):
            loads = [store.load(make_record().key, NOW) for _ in range(5)]
            errors = await asyncio.gather(*loads, return_exceptions=True)
            assert all("certificate verify failed" in str(error) for error in errors), errors
    finally:
        await store.aclose()


# The number of columns of each earlier release's table: before sessions kept the
# client address, before they kept the time of the login, and before a login could
# shorten its limits.
_EARLIER = [10, 11, 12]
_EARLIER_IDS = ["first", "addresses", "login-times"]
_EXTRA_COLUMNS = {
    11: ", ip_address text NOT NULL DEFAULT ''",
    12: ", authenticated_at double precision",
}


def _old_table(postgres: PostgresServer, table: str, old: SessionRecord, *, columns: int) -> None:
    """The table as an earlier release made it, with its first ``columns``, and a row."""
    extra = "".join(_EXTRA_COLUMNS[n] for n in range(11, columns + 1))
    with postgres.connect() as db:
        db.execute(
            f'CREATE TABLE "{table}" ('
            ' key text COLLATE "C" PRIMARY KEY, public_id text NOT NULL,'
            " data bytea NOT NULL, user_id text, created_at double precision NOT NULL,"
            " last_seen_at double precision NOT NULL, expires_at double precision NOT NULL,"
            " remember boolean NOT NULL DEFAULT false, user_agent text NOT NULL DEFAULT '',"
            f" version bigint NOT NULL DEFAULT 1{extra})"
        )
        values = ",".join(["%s"] * columns)
        db.execute(f'INSERT INTO "{table}" VALUES ({values})', old[:columns])


@pytest.mark.parametrize("columns", _EARLIER, ids=_EARLIER_IDS)
async def test_a_table_from_an_earlier_release_is_brought_up_to_date(
    postgres: PostgresServer, columns: int
) -> None:
    table = unique_prefix()
    old = make_record(user_id="alice", user_agent="Firefox", version=3)
    _old_table(postgres, table, old, columns=columns)
    stores = [PostgresStore(postgres.url, table=table) for _ in range(2)]
    try:
        await assert_upgraded(stores, old)  # one adds the columns, the other finds them
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize(
    ("columns", "named"),
    [
        (10, "ip_address, authenticated_at, idle_timeout, absolute_timeout columns"),
        (11, "the authenticated_at, idle_timeout, absolute_timeout columns"),
        (12, "the idle_timeout, absolute_timeout columns"),
    ],
    ids=_EARLIER_IDS,
)
async def test_without_create_table_an_old_table_names_the_statements_to_run(
    postgres: PostgresServer, columns: int, named: str
) -> None:
    table = unique_prefix()
    old = make_record(user_id="alice")
    _old_table(postgres, table, old, columns=columns)
    store = PostgresStore(postgres.url, table=table, create_table=False)
    try:
        with pytest.raises(StoreError, match="ADD COLUMN IF NOT EXISTS absolute_timeout") as caught:
            await store.load(old.key, NOW)
        assert named in str(caught.value)
        statements = str(caught.value).count("ADD COLUMN IF NOT EXISTS")
        assert statements == 14 - columns  # one for each missing column, and no other
        assert not isinstance(caught.value, StoreUnavailableError)
        with postgres.connect() as db:
            db.execute(store.schema_sql())  # the app's migration, run again after upgrading
        assert await store.load(old.key, NOW) == old._replace(authenticated_at=old.created_at)
    finally:
        await store.aclose()


async def test_a_column_migrated_to_another_type_is_read_on(postgres: PostgresServer) -> None:
    """No statement is prepared behind the scenes (a cached plan would fail on the new
    type until a restart), and values come back as the types the store needs."""
    store = PostgresStore(postgres.url, table=unique_prefix(), max_connections=1)
    try:
        record = make_record(user_agent="Firefox")
        await store.save(record)
        for _ in range(10):  # psycopg prepares a statement from its fifth use on
            assert await store.load(record.key, NOW) == record
        with postgres.connect() as db:
            db.execute(f"ALTER TABLE {store.table} ALTER COLUMN user_agent TYPE varchar(512)")
            db.execute(f"ALTER TABLE {store.table} ALTER COLUMN last_seen_at TYPE numeric")
            db.execute(f"ALTER TABLE {store.table} ALTER COLUMN remember TYPE text")
        assert await store.load(record.key, NOW) == record  # remember: 'false', not True
        assert await store.save(record._replace(version=2), expected_version=1)
    finally:
        await store.aclose()


async def test_a_table_dropped_under_a_running_store_is_made_again(
    postgres: PostgresServer,
) -> None:
    store = PostgresStore(postgres.url, table=unique_prefix())
    try:
        await store.save(make_record())
        with postgres.connect() as db:
            db.execute(f"DROP TABLE {store.table}")
        record = make_record()
        await store.save(record)  # not a 503 until a restart
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_used_for_a_save(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save is never sent twice, so it must not meet a connection that an idle
    timeout (``idle_session_timeout``, a firewall, a NAT) closed: one that sat unused is
    checked first. Here, unused for a moment is enough."""
    monkeypatch.setattr("coatcheck.stores.postgres._ASK_AFTER_IDLE", 0.0)
    name = unique_prefix()
    store = PostgresStore(f"{postgres.url}?application_name={name}", table=name)
    try:
        await store.load(make_record().key, NOW)  # a pooled connection, now idle
        with postgres.connect() as db:
            ended = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            ).fetchall()
        assert ended
        assert all(done for (done,) in ended)
        record = make_record()
        assert await store.save(record)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_a_server_that_refuses_writes_for_a_while_is_an_outage(
    postgres: PostgresServer,
) -> None:
    """A standby being promoted answers writes with "read-only transaction"."""
    store = PostgresStore(postgres.url, table=unique_prefix())
    try:
        record = make_record()
        await store.save(record)
        read_only = PostgresStore(
            f"{postgres.url}?options=-c%20default_transaction_read_only%3Don", table=store.table
        )
        try:
            with pytest.raises(StoreUnavailableError, match="read-only transaction"):
                await read_only.save(make_record())
            assert await read_only.load(record.key, NOW) == record
        finally:
            await read_only.aclose()
    finally:
        await store.aclose()


async def test_another_apps_table_of_the_same_name_is_refused_untouched(
    postgres: PostgresServer,
) -> None:
    table = unique_prefix()
    with postgres.connect() as db:
        db.execute(f"CREATE TABLE {table} (session_key text PRIMARY KEY, expire_date text)")
    store = PostgresStore(postgres.url, table=table)
    try:
        with pytest.raises(StoreError, match="not a coatcheck session table"):
            await store.save(make_record())
    finally:
        await store.aclose()
    with postgres.connect() as db:
        columns = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    assert columns == [("session_key",), ("expire_date",)]


async def test_saves_after_a_quiet_spell_meet_no_connection_the_server_closed(
    postgres: PostgresServer,
) -> None:
    """The server ends sessions idle for 1.5 s (its ``idle_session_timeout``; a firewall
    or a NAT does the same): after a quiet spell every pooled connection is dead, and
    the first saves must neither fail nor wait out the timeout."""
    url = f"{postgres.url}?options=-c%20idle_session_timeout%3D1500"
    store = PostgresStore(url, table=unique_prefix(), max_connections=4)
    try:
        records = [make_record() for _ in range(8)]
        await asyncio.gather(*(store.save(record) for record in records[:4]))  # four open
        await asyncio.sleep(2)
        started = time.monotonic()
        assert await asyncio.gather(*(store.save(record) for record in records[4:])) == [True] * 4
        assert time.monotonic() - started < 1.5
        assert await store.count(NOW) == 8
    finally:
        await store.aclose()
