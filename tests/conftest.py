from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

import coatcheck
from coatcheck import MemoryStore, SessionRecord, Store, StoreUnavailableError, _audit
from coatcheck.stores.base import Merge
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, FakeClock

from . import postgres_server, redis_servers
from .store_kinds import STORE_KINDS, build_store

# The kit's asserts explain a failure as a test module's do; registered before its import.
pytest.register_assert_rewrite("coatcheck.store_contract")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingStore:
    """A real store that also counts the calls made to it, to prove laziness."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def load(self, key: str, now: float) -> SessionRecord | None:
        self.calls["load"] += 1
        return await self.inner.load(key, now)

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        self.calls["save"] += 1
        return await self.inner.save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        )

    async def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(key)

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        self.calls["list_user"] += 1
        return await self.inner.list_user(user_id, now)

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        self.calls["delete_user"] += 1
        return await self.inner.delete_user(user_id, keep=keep, now=now)

    async def delete_all(self, now: float) -> int:
        self.calls["delete_all"] += 1
        return await self.inner.delete_all(now)

    async def purge_expired(self, now: float) -> int:
        return await self.inner.purge_expired(now)

    async def count(self, now: float) -> int:
        return await self.inner.count(now)

    async def aclose(self) -> None:
        self.calls["aclose"] += 1
        await self.inner.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture(autouse=True)
def _same_origin_untouched() -> Iterator[None]:
    """A test that hands ``SAME_ORIGIN`` itself to Starlette's ``TestClient`` lets the
    client add its headers to it, and every later test's clients send them."""
    yield
    assert SAME_ORIGIN == {"sec-fetch-site": "same-origin"}, "give clients {**SAME_ORIGIN}"


class MeanwhileStore(MemoryStore):
    """Runs ``meanwhile`` once, right after the next listing of a user's sessions: a
    parallel request landing between a check of the list and what follows from it."""

    meanwhile: Any = None

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        found = await super().list_user(user_id, now)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return found


class DownStore(MemoryStore):
    """A memory store whose loads and saves fail as a store out of reach does, while
    ``down``: an outage where the test chooses it."""

    down = False

    async def load(self, key: str, now: float) -> SessionRecord | None:
        if self.down:
            raise StoreUnavailableError("the store is down", retry_after=1)
        return await super().load(key, now)

    async def save(self, record: SessionRecord, **options: Any) -> bool:
        if self.down:
            raise StoreUnavailableError("the store is down", retry_after=1)
        return await super().save(record, **options)


def frames_showing(error: BaseException, secret: str) -> list[str]:
    """coatcheck's frames in ``error``'s traceback (and in those of the errors it
    chains) with a local whose text shows ``secret``: what an error tracker such as
    Sentry, which sends each frame's locals, would send off the machine."""
    package = str(Path(coatcheck.__file__).parent)
    found: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
        trace = current.__traceback__
        while trace is not None:
            frame = trace.tb_frame
            trace = trace.tb_next
            if not frame.f_code.co_filename.startswith(package):
                continue
            for name, value in frame.f_locals.items():
                if secret in (value if isinstance(value, str) else repr(value)):
                    found.append(f"{frame.f_code.co_name}: {name}")
    return found


@pytest.fixture(autouse=True)
def _security_log_unspent() -> None:
    """The log's budgets of lines a minute, and what it said once, are the process's: a
    test that looks for its line must not find it spent or said by the tests before."""
    _audit.forget()


# A package that serves store URLs of its own, installed the way pip would leave it: a
# module and a dist-info folder whose entry points name its schemes.
_PLUGIN_MODULE = """
from coatcheck import MemoryStore


class ExampleStore:
    def __init__(self, url):
        self.url = url
        self._inner = MemoryStore()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def from_url(url):
    return ExampleStore(url)


def not_a_store(url):
    return object()


def unreachable(url):
    raise RuntimeError(f"cannot reach {url}")
"""
_PLUGIN_ENTRY_POINTS = """
[coatcheck.stores]
example = coatcheck_plugin_example:from_url
notastore = coatcheck_plugin_example:not_a_store
missing = coatcheck_plugin_nowhere:from_url
redis = coatcheck_plugin_example:from_url
Unreachable = coatcheck_plugin_example:unreachable
"""


@pytest.fixture
def store_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed package that serves ``example://`` (and tries to take ``redis://``)."""
    folder = tmp_path / "site-packages"
    info = folder / "coatcheck_plugin_example-1.0.dist-info"
    info.mkdir(parents=True)
    (folder / "coatcheck_plugin_example.py").write_text(_PLUGIN_MODULE)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: coatcheck-plugin-example\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(_PLUGIN_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(folder))
    yield
    sys.modules.pop("coatcheck_plugin_example", None)


@pytest.fixture(scope="session", autouse=True)
def redis_servers_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[redis_servers.RedisServers]:
    """Redis servers for the whole run, each started the first time a test needs it."""
    servers = redis_servers.RedisServers(tmp_path_factory.mktemp("redis"))
    redis_servers.activate(servers)
    try:
        yield servers
    finally:
        redis_servers.activate(None)
        servers.stop()


@pytest.fixture(scope="session", autouse=True)
def postgres_servers() -> Iterator[postgres_server.PostgresServers]:
    """The PostgreSQL server for the whole run, started the first time a test needs it."""
    servers = postgres_server.PostgresServers()
    postgres_server.activate(servers)
    try:
        yield servers
    finally:
        postgres_server.activate(None)
        servers.stop()


@pytest.fixture(scope="session")
def postgres(postgres_servers: postgres_server.PostgresServers) -> postgres_server.PostgresServer:
    return postgres_servers.server()


@pytest.fixture
def own_postgres() -> Iterator[postgres_server.PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop, freeze and restart."""
    servers = postgres_server.PostgresServers()
    try:
        yield servers.server()
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_server(redis_servers_registry: redis_servers.RedisServers) -> redis_servers.RedisServer:
    return redis_servers_registry.standalone()


@pytest.fixture(scope="session")
def redis_cluster(
    redis_servers_registry: redis_servers.RedisServers,
) -> redis_servers.RedisClusterServers:
    return redis_servers_registry.cluster()


@pytest.fixture(scope="session")
def redis_sentinel(
    redis_servers_registry: redis_servers.RedisServers,
) -> redis_servers.RedisSentinelServers:
    return redis_servers_registry.sentinel()


@pytest.fixture(params=STORE_KINDS)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn, real servers included."""
    store = build_store(request.param, tmp_path)
    yield store
    await store.aclose()


def client_for(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    """An in-process HTTPS client that keeps no cookies (tests send each one by hand)
    and, like a browser on the app's own page, says its requests are same-origin."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=TEST_BASE_URL,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        headers={**SAME_ORIGIN, **kwargs.pop("headers", {})},
        **kwargs,
    )


async def shut_down(app: Any) -> None:
    """Run the app's lifespan through start-up and shutdown, as a server does."""
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return next(messages)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# Limits shortened by a later deploy, and how the session outlives them: (idle, absolute)
# of the new limits, the seconds between the refreshing reads made under the old ones
# (each keeps last_seen_at recent), then the seconds until the read under the new ones.
# "idle" and "absolute" each break one limit alone: dropping either check on load fails one.
SHORTENED = [
    pytest.param((10, 20), [], 30, id="both"),
    pytest.param((10, 10_000), [], 11, id="idle"),
    pytest.param((1000, 1500), [500, 500], 600, id="absolute"),
]


def without_denial_responses(app: Any) -> Any:
    """``app`` as served by a server that cannot refuse a WebSocket with an HTTP
    response (no ``websocket.http.response`` extension): refusals are close codes."""

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            extensions = dict(scope.get("extensions") or {})
            extensions.pop("websocket.http.response", None)
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return served
