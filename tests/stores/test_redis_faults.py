"""The Redis store under network faults, on real servers: a reply lost after the server
ran a save, a save resent after its session was revoked, connections the server closed
while idle, a node that hangs, a burst past the pool's size, and Cluster URL flags."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import os
import signal
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Connection, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from coatcheck import (
    SessionConfig,
    SessionEndedError,
    SessionMiddleware,
    StoreFullError,
    StoreUnavailableError,
    store_from_url,
)
from coatcheck._devices import end_record
from coatcheck._ids import store_key
from coatcheck._persist import Persistence
from coatcheck.fastapi import SessionDep
from coatcheck.session import Session
from coatcheck.stores import SessionRecord, _redis_codec
from coatcheck.stores._redis_errors import translated
from coatcheck.stores.redis import RedisStore

from .. import redis_servers
from ..apps import make_app
from ..conftest import client_for
from ..redis_servers import RedisClusterServers, RedisServer, free_port
from .conftest import NOW, build_store, make_record, unique_prefix

pytestmark = pytest.mark.anyio
NAME = "__Host-session"


def counter_app(store: RedisStore) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        return {}

    @app.post("/inc")
    async def inc(session: SessionDep) -> dict[str, int]:
        count: int = session.modify("count", lambda n: n + 1, default=0)
        return {"count": count}

    @app.get("/count")
    async def read(session: SessionDep) -> dict[str, object]:
        return {"count": session.get("count"), "user": session.user_id}

    app.add_middleware(SessionMiddleware, store=store, config=SessionConfig())
    return app


def cookie(response: httpx.Response) -> dict[str, str]:
    return {"cookie": f"{NAME}={response.cookies[NAME]}"}


class CuttingProxy:
    """A TCP proxy in front of a redis-server that, once armed with a needle, forwards
    the next request holding it and then drops the client's connection before the reply:
    the server ran the command, the client never heard, and redis-py sends it again on
    a new connection. Arm it with ``b"EVALSHA"`` for any script, or one script's SHA."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.needle: bytes | None = None
        self.on_cut: Callable[[], Awaitable[object]] | None = None  # runs before the cut
        self.cuts = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        cut = asyncio.Event()

        async def up() -> None:
            while data := await reader.read(65536):
                upstream.write(data)
                await upstream.drain()
                if self.needle is not None and self.needle in data:
                    self.needle = None
                    self.cuts += 1
                    cut.set()
                    await asyncio.sleep(0.05)  # the server runs the script meanwhile
                    if self.on_cut is not None:
                        await self.on_cut()
                    writer.transport.abort()
                    upstream.close()
                    return

        async def down() -> None:
            while data := await upstream_reader.read(65536):
                if cut.is_set():
                    continue  # the lost reply; up() hangs up once on_cut has run
                writer.write(data)
                await writer.drain()

        # When either side hangs up, both go: a half-open pair would keep this
        # handler, and so the server's wait_closed() (Python 3.12.1+), waiting forever.
        directions = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for stream in (writer, upstream):
                stream.close()
            for direction in directions:
                direction.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
            for stream in (writer, upstream):
                await asyncio.gather(stream.wait_closed(), return_exceptions=True)


async def test_a_save_whose_reply_was_lost_is_applied_once(redis_server: RedisServer) -> None:
    async with CuttingProxy(redis_server.port) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=unique_prefix())
        try:
            async with client_for(counter_app(store)) as client:
                alice = cookie(await client.post("/login"))
                assert (await client.post("/inc", headers=alice)).json() == {"count": 1}
                proxy.needle = b"EVALSHA"  # the next script: this save
                second = await client.post("/inc", headers=alice)
                stored = await client.get("/count", headers=alice)
        finally:
            await store.aclose()
    assert proxy.cuts == 1
    assert second.json() == {"count": 2}
    assert stored.json() == {"count": 2, "user": "alice"}  # not 3: applied once


async def test_a_save_resent_after_another_saved_on_top_is_not_merged_again(
    redis_server: RedisServer,
) -> None:
    """The count's save lands and its reply is lost; another app server saves over it
    before redis-py sends it again. That copy must know its own write under the other's
    and stop, not take it for a rival and count once more."""
    prefix = unique_prefix()
    elsewhere = RedisStore.from_url(redis_server.url, prefix=prefix)
    async with CuttingProxy(redis_server.port) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
        try:
            async with client_for(counter_app(store)) as client:
                alice = cookie(await client.post("/login"))
                assert (await client.post("/inc", headers=alice)).json() == {"count": 1}
                key = store_key(alice["cookie"].split("=", 1)[1])

                async def save_on_top() -> None:
                    landed = await elsewhere.load(key, time.time())
                    assert landed is not None  # the first copy ran
                    theirs = landed._replace(
                        data=b'{"count":2,"theme":"dark"}', version=landed.version + 1
                    )
                    assert await elsewhere.save(theirs, expected_version=landed.version)

                proxy.on_cut = save_on_top
                proxy.needle = b"EVALSHA"  # the next script: this save
                second = await client.post("/inc", headers=alice)
                stored = await client.get("/count", headers=alice)
        finally:
            await store.aclose()
            await elsewhere.aclose()
    assert proxy.cuts == 1
    assert second.json() == {"count": 2}
    assert stored.json() == {"count": 2, "user": "alice"}  # not 3: counted once


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_saves_sent_twice_are_applied_once(kind: str, tmp_path: Path) -> None:
    """What redis-py does when a reply is lost: the same call again, on a new connection,
    with the same token. A login (a rotation, which on Cluster is several steps) and a
    plain save each report success the second time too, and leave exactly what the
    first left. Another save that builds the same bytes is another save, not a copy."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    try:
        anonymous = make_record(data=b'{"cart":["apple"]}')
        await store.save(anonymous)
        login = make_record(user_id="alice", data=anonymous.data, version=2)
        token = _redis_codec.save_token()
        for _ in range(2):
            assert await store._save_once(login, anonymous.key, 1, token) is True
        later = login._replace(data=b'{"cart":["apple","pear"]}', version=3)
        token = _redis_codec.save_token()
        for _ in range(2):
            assert await store._save_once(later, None, 2, token) is True
        assert await store.save(later, expected_version=2) is False  # a new token: lost
        assert await store.load(later.key, NOW) == later
        assert await store.load(anonymous.key, NOW) is None
        assert await store.list_user("alice", NOW) == [later]
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_session_saved_again_then_ended_refuses_its_first_save_resent(
    kind: str, tmp_path: Path
) -> None:
    """The creating save's token stays with the session through later saves, so that
    ending it notes that token: on Cluster a later save with a version check dropped
    it, and redis-py's resent copy of the first save brought the session back."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    try:
        created = make_record(user_id="alice")
        token = _redis_codec.save_token()
        assert await store._save_once(created, None, None, token) is True
        later = created._replace(data=b'{"cart":["fig"]}', version=created.version + 1)
        assert await store.save(later, expected_version=created.version)
        await store.delete(created.key)
        assert await store._save_once(created, None, None, token) is False  # resent
        assert await store.load(created.key, NOW) is None
    finally:
        await store.aclose()


# Two ways to end a session from another app server: "log out everywhere" for its user,
# or a logout or a device revocation of this one session.
ENDINGS = ["delete_user", "delete"]


async def end(store: RedisStore, how: str, record: SessionRecord) -> int:
    if how == "delete_user":
        return await store.delete_user("alice", now=NOW)
    await store.delete(record.key)
    return 1


@pytest.mark.parametrize("how", ENDINGS)
async def test_a_save_resent_after_its_session_was_revoked_stays_refused(
    redis_server: RedisServer, how: str
) -> None:
    """A login's save lands, its reply is lost, another app server ends the session,
    then redis-py sends the save again: the session stays ended."""
    prefix = unique_prefix()
    elsewhere = RedisStore.from_url(redis_server.url, prefix=prefix)
    async with CuttingProxy(redis_server.port) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
        try:
            await store.save(make_record())  # the server has loaded the script
            proxy.needle = store._scripts.standalone_save.sha.encode()
            landed: list[bool] = []
            login = make_record(user_id="alice")

            async def log_out() -> None:
                landed.append(await elsewhere.load(login.key, NOW) == login)
                assert await end(elsewhere, how, login) == 1

            proxy.on_cut = log_out
            assert await store.save(login) is False  # the resent copy: refused
            assert proxy.cuts == 1
            assert landed == [True]  # the first copy had landed
            assert await elsewhere.load(login.key, NOW) is None
            assert await elsewhere.list_user("alice", NOW) == []
            assert await store.save(login) is True  # a save of its own is not a resend
        finally:
            await store.aclose()
            await elsewhere.aclose()


@pytest.mark.parametrize("how", ENDINGS)
async def test_cluster_write_resent_after_its_session_was_revoked_stays_refused(
    tmp_path: Path, how: str
) -> None:
    """The same, step by step as a Cluster login sends it: the write, then the session
    ended, then the write again with the very same arguments, token included."""
    clustered = build_store("redis-cluster", tmp_path)
    assert isinstance(clustered, RedisStore)
    try:
        await _resend_after_revocation(clustered, how)
    finally:
        await clustered.aclose()


async def _resend_after_revocation(clustered: RedisStore, how: str) -> None:
    login = make_record(user_id="alice")
    names, scripts = clustered._names, clustered._scripts
    index = [names.index("alice")]
    entry = [login.key, repr(login.expires_at), "60000", repr(login.last_seen_at)]
    await scripts.index_add(keys=index, args=entry)
    token = _redis_codec.save_token()
    keys = [names.session(login.key), names.receipt(login.key)]
    args = ["", repr(login.last_seen_at), "60000", token, *_redis_codec.encode_fields(login, token)]
    assert _redis_codec.done(await scripts.write(keys=keys, args=args))
    assert await clustered.load(login.key, NOW) == login
    assert await end(clustered, how, login) == 1
    assert not _redis_codec.done(await scripts.write(keys=keys, args=args))
    assert await clustered.load(login.key, NOW) is None
    assert await clustered.save(login) is True  # a save of its own is not a resend


async def test_cluster_batches_stay_within_a_small_pool(
    redis_cluster: RedisClusterServers,
) -> None:
    """redis-py's Cluster pool fails past its size rather than wait: the device list,
    a count and "log out everywhere" over 60 sessions fit in eight connections a node."""
    url = f"{redis_cluster.url}?max_connections=8"
    store = RedisStore.from_url(url, prefix=unique_prefix())
    try:
        records = [make_record(user_id="alice") for _ in range(60)]
        for record in records:
            await store.save(record)
        assert len(await store.list_user("alice", NOW)) == 60
        assert await store.count(NOW) == 60
        assert await store.delete_user("alice", now=NOW) == 60
    finally:
        await store.aclose()


async def test_cluster_writes_survive_connections_closed_while_idle(
    redis_cluster: RedisClusterServers,
) -> None:
    store = RedisStore.from_url(redis_cluster.url, prefix=unique_prefix())
    nodes = redis_cluster.nodes
    try:
        async with client_for(counter_app(store)) as client:
            for _ in range(4):  # a connection to every node in the pool
                await client.post("/login")
            deadline = time.monotonic() + 15
            for node in nodes:
                with node.client() as admin:
                    admin.config_set("timeout", 1)
                    # Until every pooled connection is closed by its server: the only
                    # client left is this one, which is never idle for a second.
                    while admin.info("clients")["connected_clients"] > 1:
                        assert time.monotonic() < deadline, admin.client_list()
                        await asyncio.sleep(0.1)
            # New visitors: no session to load first, so a login's save is the first use.
            relogins = [await client.post("/login") for _ in range(4)]
            counts = [await client.post("/inc", headers=cookie(r)) for r in relogins]
    finally:
        for node in nodes:
            with node.client() as admin:
                admin.config_set("timeout", 0)
        await store.aclose()
    assert [r.status_code for r in relogins] == [200] * 4
    assert [r.json() for r in counts] == [{"count": 1}] * 4


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisClusterServers]:
    """A cluster of this module's own, since a test here freezes one of its nodes."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("frozen")).start()
    yield cluster  # type: ignore[misc]
    cluster.stop()


def test_a_hung_cluster_node_costs_one_timeout_not_three(
    own_cluster: RedisClusterServers,
) -> None:
    # After a timeout redis-py's Cluster client rebuilds its node table and leaves some
    # connections for the garbage collector to find once the loop is gone, with a
    # ResourceWarning each: so this runs on a loop of its own, collected right after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        frozen = asyncio.run(_logins_with_a_frozen_node(own_cluster))
        gc.collect()
    assert frozen.statuses.count(503) == 3
    # Every command that reached the hung node was sent there once: a timeout is not
    # retried. (Timing alone cannot tell: the node table rebuilt after a timeout may ask
    # the hung node first, which costs a second wait now and then.)
    assert frozen.sends_per_command
    assert set(frozen.sends_per_command) == {1}
    assert frozen.slowest < 2.0  # no hang, whatever the machine's load


@dataclasses.dataclass
class _FrozenNodeRun:
    statuses: list[int] = dataclasses.field(default_factory=list)
    sends_per_command: list[int] = dataclasses.field(default_factory=list)
    slowest: float = 0.0


def _count_sends_to(client: RedisCluster, port: int, counts: list[int]) -> None:
    """For each command the client runs, note how often it was sent to ``port``."""
    sends: contextvars.ContextVar[list[int]] = contextvars.ContextVar("sends")
    execute, send = client.execute_command, client._execute_command

    async def counted_execute(*args: Any, **kwargs: Any) -> Any:
        mine: list[int] = []
        sends.set(mine)  # each command of a batch runs in a task, with its own context
        try:
            return await execute(*args, **kwargs)
        finally:
            if port in mine:
                counts.append(mine.count(port))

    async def counted_send(node: Any, *args: Any, **kwargs: Any) -> Any:
        sends.get().append(node.port)
        return await send(node, *args, **kwargs)

    client.execute_command = counted_execute  # type: ignore[method-assign]
    client._execute_command = counted_send  # type: ignore[method-assign]


async def _logins_with_a_frozen_node(cluster: RedisClusterServers) -> _FrozenNodeRun:
    store = RedisStore.from_url(f"{cluster.url}?timeout=0.3", prefix=unique_prefix())
    assert isinstance(store.client, RedisCluster)
    run = _FrozenNodeRun()
    try:
        async with client_for(counter_app(store)) as client:
            ids = [(await client.post("/login")).cookies[NAME] for _ in range(12)]
            # Freeze a node that holds some of alice's sessions but not her index, so
            # that listing and revoking reach it in their batches.
            index_port = store.client.get_node_from_key(store._names.index("alice")).port
            ports = [
                store.client.get_node_from_key(store._names.session(store_key(sid))).port
                for sid in ids
            ]
            port = max((p for p in ports if p != index_port), key=ports.count)
            frozen = next(node.process for node in cluster.nodes if node.port == port)
            assert frozen is not None
            _count_sends_to(store.client, port, run.sends_per_command)
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                # Each new session lands on the frozen node one time in three: stop after
                # three that did (eight logins alone missed it one run in 26).
                for _ in range(40):
                    started = time.monotonic()
                    run.statuses.append((await client.post("/login")).status_code)
                    run.slowest = max(run.slowest, time.monotonic() - started)
                    if run.statuses.count(503) == 3:
                        break
                for admin in (store.list_user("alice", time.time()), store.delete_user("alice")):
                    started = time.monotonic()
                    with contextlib.suppress(StoreUnavailableError):
                        await admin
                    run.slowest = max(run.slowest, time.monotonic() - started)
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
    finally:
        await store.aclose()
    return run


async def test_a_burst_past_max_connections_waits_for_a_free_one(
    redis_server: RedisServer,
) -> None:
    store = RedisStore.from_url(f"{redis_server.url}?max_connections=4", prefix=unique_prefix())
    try:
        async with client_for(counter_app(store)) as client:
            responses = await asyncio.gather(*(client.post("/login") for _ in range(50)))
    finally:
        await store.aclose()
    assert [r.status_code for r in responses] == [200] * 50


async def test_cluster_url_flags_are_read_as_booleans(tmp_path: Path) -> None:
    off = store_from_url("rediss+cluster://127.0.0.1:7000?ssl_check_hostname=false")
    on = store_from_url("rediss+cluster://127.0.0.1:7000?ssl_check_hostname=true")
    assert isinstance(off, RedisStore)
    assert isinstance(on, RedisStore)
    settings = [store.client.connection_kwargs["ssl_check_hostname"] for store in (off, on)]
    await off.aclose()
    await on.aclose()
    assert settings == [False, True]


async def test_what_redis_py_leaks_from_a_broken_connection_is_an_outage() -> None:
    """redis-py lets a bare AttributeError or TypeError out when a connection is closed
    under a command in flight (redis/redis-py#4287, and a Cluster connection
    disconnected while another request was connecting it): that is a 503, not a 500."""
    never_connected = Connection(host="127.0.0.1", port=free_port())
    with (
        pytest.raises(StoreUnavailableError, match="connection broke") as caught,
        translated(retry_after=1),
    ):
        await never_connected._send_packed_command([b"PING"])  # its writer is None
    assert isinstance(caught.value.__cause__, AttributeError)
    assert caught.value.retry_after == 1
    with pytest.raises(StoreUnavailableError, match="connection broke"), translated(1):
        await asyncio.sleep("soon")  # type: ignore[arg-type]  # fails inside asyncio


async def test_a_script_the_server_lost_is_an_outage_not_a_fault(redis_server: RedisServer) -> None:
    """A failover leaves the new primary without coatcheck's scripts, and redis-py
    loads them again; a request that meets NOSCRIPT meanwhile gets the 503, logged as
    an outage that passes, not as an error for the operator to fix."""
    client = Redis.from_url(redis_server.url)
    try:
        with pytest.raises(StoreUnavailableError) as caught, translated(retry_after=1):
            await client.evalsha("0" * 40, 0)
    finally:
        await client.aclose()
    assert isinstance(caught.value.__cause__, NoScriptError)
    assert not isinstance(caught.value, StoreFullError)


def test_what_uvloop_raises_from_a_closed_connection_is_an_outage(
    redis_server: RedisServer,
) -> None:
    """uvicorn runs on uvloop where it is installed, and uvloop refuses a write to a
    connection closed under it with a RuntimeError: a 503 as well, not a 500. (On
    Python 3.13 the stream notices first, and redis-py raises its ConnectionError.)"""
    import uvloop

    async def write_to_a_closed_connection() -> None:
        connection = Connection(host="127.0.0.1", port=redis_server.port)
        await connection.connect()
        assert connection._writer is not None
        connection._writer.transport.abort()  # closed under the command about to go
        try:
            with (
                pytest.raises(StoreUnavailableError, match=r"connection broke|Connection lost"),
                translated(1),
            ):
                await connection.send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
        finally:
            await connection.disconnect()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(write_to_a_closed_connection())
    finally:
        loop.close()
    # Any other RuntimeError is a bug of its own, raised as it is.
    with pytest.raises(RuntimeError, match="not an outage"), translated(1):
        raise RuntimeError("not an outage")


class BreaksUnder:
    """Makes the next ``times`` commands of a real client, after the first ``after``,
    fail as redis-py fails when another task closed their connection mid-command: with
    the AttributeError its own connection code raises, from a connection whose writer
    is gone. With ``script`` (a SHA), only that script's calls count."""

    def __init__(
        self,
        store: RedisStore,
        times: int,
        *,
        after: int = 0,
        landed: Callable[[], Awaitable[None]] | None = None,
        script: str | None = None,
    ) -> None:
        self.times = times
        self.after = after
        self.broken = 0
        self.landed = landed  # if given, the command runs and only its reply is lost
        self.script = script
        self._send = store.client.execute_command
        store.client.execute_command = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.script is not None and args[:2] != ("EVALSHA", self.script):
            return await self._send(*args, **kwargs)
        if str(args[0]).upper().startswith("CONFIG"):  # the store's look at the server
            return await self._send(*args, **kwargs)
        if self.after:
            self.after -= 1
        elif self.broken < self.times:
            self.broken += 1
            if self.landed is not None:
                try:
                    await self._send(*args, **kwargs)
                except NoScriptError:
                    if self.script is not None:
                        self.broken -= 1  # redis-py loads it on that node and sends it again
                    raise
                await self.landed()
            writer_gone = Connection(host="127.0.0.1", port=free_port())
            await writer_gone._send_packed_command([b"PING"])  # its writer is None
        return await self._send(*args, **kwargs)


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_read_or_delete_broken_under_redis_py_is_made_once_more(
    kind: str, tmp_path: Path
) -> None:
    """Parallel requests on Cluster met this when the scripts had to be loaded again:
    a listing, a load, a delete or "log out my other devices" then succeeds at the
    second try, not with a 503."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        breaking = BreaksUnder(store, times=1)
        assert await store.load(record.key, NOW) == record
        breaking.times += 1
        assert await store.list_user("alice", NOW) == [record]
        breaking.times += 1
        await store.delete(record.key)
        assert breaking.broken == 3
        assert await store.load(record.key, NOW) is None
        others = [make_record(user_id="alice") for _ in range(3)]
        for other in others:
            await store.save(other)
        breaking.times += 1
        assert await store.delete_user("alice", keep=others[0].key, now=NOW) == 2
        assert breaking.broken == 4
        assert await store.list_user("alice", NOW) == [others[0]]
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_save_broken_under_redis_py_is_made_once_more(kind: str, tmp_path: Path) -> None:
    """A save is sent again with its token, so it lands once. A login broken at any of
    its steps (on Cluster: index, take the old session, write the new one) is finished
    by the second copy: the new session stored and listed, the old one gone."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    breaking = BreaksUnder(store, times=0)
    steps = 3 if store.cluster else 1
    try:
        for step in range(steps):
            anonymous = make_record(data=b'{"cart":["apple"]}')
            breaking.times, breaking.after = breaking.times + 1, 0
            assert await store.save(anonymous) is True
            login = make_record(user_id="alice", data=anonymous.data, version=2)
            breaking.times, breaking.after = breaking.times + 1, step
            assert await store.save(login, replaces=anonymous.key, expected_version=1) is True
            later = login._replace(data=b'{"cart":["apple","pear"]}', version=3)
            breaking.times += 1
            assert await store.save(later, expected_version=2) is True
            assert breaking.broken == 3 * (step + 1)
            assert await store.load(anonymous.key, NOW) is None
            assert await store.load(later.key, NOW) == later
            assert await store.list_user("alice", NOW) == [later]
            await store.delete(later.key)
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
@pytest.mark.parametrize("how", ENDINGS)
async def test_a_save_made_again_after_its_session_was_revoked_stays_refused(
    kind: str, how: str, tmp_path: Path
) -> None:
    """The login's write landed and its reply was lost; another app server ended the
    session before the second copy went out. That copy carries the first one's token,
    so the session stays ended and the login is reported as not saved."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    elsewhere = RedisStore(store.client, prefix=store.prefix)
    login = make_record(user_id="alice")
    landed: list[bool] = []

    async def log_out() -> None:
        landed.append(await store.load(login.key, NOW) == login)
        assert await end(elsewhere, how, login) == 1

    breaking = BreaksUnder(store, times=1, after=1 if store.cluster else 0, landed=log_out)
    try:
        assert await store.save(login) is False
        assert breaking.broken == 1
        assert landed == [True]
        assert await store.load(login.key, NOW) is None
        assert await store.list_user("alice", NOW) == []
    finally:
        await store.aclose()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_login_as_someone_else_ended_before_its_resend_is_not_reported_stored(
    kind: str, tmp_path: Path
) -> None:
    """Alice's browser signs in as bob. The write lands, its reply is lost, and "log out
    everywhere" for bob runs before the second copy, which is refused: the login must
    fail (a 409 for the request), not hand the browser a cookie that opens nothing."""
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    persistence = Persistence(store, SessionConfig(), None)
    try:
        first = await Session(persistence, {"headers": []}).load()
        first.login("alice")
        (header,) = [v for k, v in await persistence.commit(first, 200) if k == b"set-cookie"]
        cookie = header.split(b";", 1)[0]
        switching = await Session(persistence, {"headers": [(b"cookie", cookie)]}).load()
        switching.login("bob")

        async def log_out_everywhere() -> None:
            assert await store.delete_user("bob", now=time.time()) == 1

        scripts = store._scripts
        write = scripts.write if store.cluster else scripts.standalone_save
        BreaksUnder(store, times=1, landed=log_out_everywhere, script=write.sha)
        with pytest.raises(SessionEndedError):
            await persistence.commit(switching, 200)
        assert await store.list_user("bob", time.time()) == []
        assert await store.list_user("alice", time.time()) == []  # replaced by the login
    finally:
        await store.aclose()


async def test_a_connection_broken_twice_is_an_outage(redis_server: RedisServer) -> None:
    store = store_from_url(redis_server.url)
    assert isinstance(store, RedisStore)
    try:
        record = make_record(user_id="alice")
        await store.save(record)
        BreaksUnder(store, times=2)
        with pytest.raises(StoreUnavailableError, match="connection broke"):
            await store.load(record.key, NOW)
        BreaksUnder(store, times=2)
        with pytest.raises(StoreUnavailableError, match="connection broke"):
            await store.list_user("alice", NOW)
        BreaksUnder(store, times=2)
        changed = record._replace(data=b'{"cart":[]}', version=2)
        with pytest.raises(StoreUnavailableError, match="connection broke"):
            await store.save(changed, expected_version=1)
        assert await store.load(record.key, NOW) == record
    finally:
        await store.aclose()


async def test_a_type_or_attribute_error_of_coatcheck_itself_stays_a_bug() -> None:
    record = make_record()
    with pytest.raises(AttributeError, match="no_such_field"), translated(retry_after=1):
        _ = record.no_such_field  # type: ignore[attr-defined]
    with pytest.raises(TypeError), translated(retry_after=1):
        _ = record.version + "1"  # type: ignore[operator]


@contextlib.contextmanager
def full(nodes: list[RedisServer]) -> Iterator[None]:
    """Redis at ``maxmemory`` under ``noeviction``: every command that adds data is
    refused (the limit is far below what each node holds), deletes are not."""
    for node in nodes:
        with node.client() as raw:
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", "1")
    try:
        yield
    finally:
        for node in nodes:
            with node.client() as raw:
                raw.config_set("maxmemory", "0")


@pytest.mark.parametrize("kind", ["redis", "redis-cluster", "valkey"])
async def test_a_full_redis_still_ends_sessions(kind: str, tmp_path: Path) -> None:
    """A client that fills Redis (an anonymous cart in a loop) must not keep a stolen
    cookie alive: logins and new data wait for room, but logout and "sign out other
    devices" free it, and go through."""
    servers = redis_servers.active()
    nodes = {
        "redis": lambda: [servers.standalone()],
        "redis-cluster": lambda: servers.cluster().nodes,
        "valkey": lambda: [servers.valkey()],
    }[kind]()
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    app = make_app(store)
    try:
        async with client_for(app) as client:
            devices = [cookie_of(await client.post("/login")) for _ in range(3)]
            visitor = cookie_of(await client.post("/write"))
            shopper = cookie_of(await client.post("/write"))
            bob = make_record(user_id="bob")
            await store.save(bob)
            # The loser of two parallel logins from one browser leaves an index entry
            # of a session never written: revoking it bars the key (if there is room).
            anonymous = make_record()
            await store.save(anonymous)
            for _ in range(2):
                login = make_record(user_id="bob")
                await store.save(login, replaces=anonymous.key, expected_version=1)
            with full(nodes):
                # Whatever adds data waits for room: a new visitor, a bigger cart, a
                # login (that of a visitor too), a plain save.
                # A new ID (a login, regenerate()) keeps the session it had: on Cluster
                # its old key is not given up where the new one cannot be written.
                adding = ("/write", {}), ("/append", shopper), ("/login", shopper)
                for path, headers in (*adding, ("/regenerate", shopper)):
                    refused = await client.post(
                        path, params={"item": "x" * 20_000}, headers=headers
                    )
                    assert refused.status_code == 503, (path, refused.text)
                    assert "retry-after" in refused.headers
                with pytest.raises(StoreFullError):
                    await store.save(make_record(user_id="carol"))
                laptop, phone, tablet = devices
                assert (await client.get("/read", headers=laptop)).json()["user"] == "alice"
                others = await client.post("/revoke-others", headers=laptop)
                assert others.json() == {"revoked": 2}, others.text
                assert (await client.post("/logout", headers=laptop)).status_code == 204
                assert (await client.post("/logout", headers=visitor)).status_code == 204
                assert await store.delete_user("bob", now=time.time()) == 2
            assert await store.list_user("bob", time.time()) == []
            assert (await client.get("/read", headers=shopper)).json()["data"] == {"n": 1}
            for ended in (laptop, phone, tablet, visitor):
                state = (await client.get("/read", headers=ended)).json()
                assert state == {"data": {}, "user": None}
            assert await store.list_user("alice", time.time()) == []
    finally:
        await store.aclose()


def cookie_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"cookie": response.headers["set-cookie"].split(";", 1)[0]}


async def _loaded(request: Request) -> Session:
    return await Session.of(request).load()


async def _sign_in(request: Request) -> Response:
    (await _loaded(request)).login("alice")
    return Response(status_code=204)


async def _sign_out_with_a_word(request: Request) -> Response:
    session = await _loaded(request)
    session.logout()
    session.flash("You are signed out.")
    return RedirectResponse("/", 303)


async def _note(request: Request) -> Response:
    (await _loaded(request)).flash("Saved.")
    return Response(status_code=204)


async def _shown(request: Request) -> Response:
    session = await _loaded(request)
    return JSONResponse(
        {"user": session.user_id, "shown": [f.message for f in session.pop_flashes()]}
    )


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_a_full_redis_signs_out_and_shows_the_last_message(kind: str, tmp_path: Path) -> None:
    """A logout that leaves a message, and a visitor's page that shows the last one (and
    so empties the session), free room: neither may answer 503 on a full server. The
    message a logout cannot store is dropped; the logout stands."""
    servers = redis_servers.active()
    nodes = [servers.standalone()] if kind == "redis" else servers.cluster().nodes
    store = build_store(kind, tmp_path)
    assert isinstance(store, RedisStore)
    routes = [
        Route("/login", _sign_in, methods=["POST"]),
        Route("/logout", _sign_out_with_a_word, methods=["POST"]),
        Route("/note", _note, methods=["POST"]),
        Route("/shown", _shown),
    ]
    app = SessionMiddleware(Starlette(routes=routes), store=store, config=SessionConfig())
    try:
        async with client_for(app) as client:
            alice = {"cookie": (await client.post("/login")).headers["set-cookie"].split(";")[0]}
            note = await client.post("/note")
            visitor = {"cookie": note.headers["set-cookie"].split(";")[0]}
            with full(nodes):
                out = await client.post("/logout", headers=alice)
                assert out.status_code == 303, out.text
                assert "Max-Age=0" in out.headers["set-cookie"]  # the cookie is cleared
                shown = await client.get("/shown", headers=visitor)
                assert shown.json() == {"user": None, "shown": ["Saved."]}, shown.text
            assert (await client.get("/shown", headers=alice)).json() == {"user": None, "shown": []}
            assert (await client.get("/shown", headers=visitor)).json()["shown"] == []
            assert await store.count(time.time()) == 0
    finally:
        await store.aclose()


async def test_an_end_whose_write_fails_on_cluster_leaves_the_session_listed(
    tmp_path: Path,
) -> None:
    """An end's dead record is not filed in the user's index: its deadline, in the past,
    would drop the entry of the live session, which a write that then fails (a node
    failing over) would leave live and unlisted, out of reach of "sign out everywhere"."""
    store = build_store("redis-cluster", tmp_path)
    assert isinstance(store, RedisStore)
    assert store._on_cluster is not None
    scripts = store._on_cluster.scripts
    real = scripts.write
    now = time.time()
    phone = make_record(
        user_id="alice", created_at=now - 3 * 86400, last_seen_at=now - 60, expires_at=now + 86400
    )
    try:
        await store.save(phone)

        async def failing(*args: Any, **kwargs: Any) -> Any:
            scripts.write = real  # type: ignore[method-assign]
            raise RedisConnectionError("the node is failing over")

        scripts.write = failing  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailableError):
            await end_record(store, phone, now)
        assert [r.key for r in await store.list_user("alice", now)] == [phone.key]
        assert await store.delete_user("alice", now=now) == 1
    finally:
        await store.aclose()
