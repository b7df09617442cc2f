"""Helpers for testing an app that uses coatcheck.

Two things trip up a first test, both on purpose:

- The session cookie is ``Secure``, so a client on ``http://testserver`` (the default of
  Starlette's ``TestClient``) never sends it back and every request looks anonymous.
  Give the client ``base_url=TEST_BASE_URL``. ``TestClient.websocket_connect`` ignores
  the base URL and uses ``ws://``: give it a whole URL under :data:`TEST_WS_BASE_URL`.
- Once a request carries a session cookie, its unsafe requests must pass the CSRF
  check. Browsers do by sending ``Sec-Fetch-Site``; a test client does when it sends
  :data:`SAME_ORIGIN` with every request. Give Starlette's ``TestClient`` a copy: it
  adds its own headers (a user agent, a websocket's upgrade) to the dict it is given.

    from fastapi.testclient import TestClient
    from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL, FakeClock

    client = TestClient(app, base_url=TEST_BASE_URL, headers={**SAME_ORIGIN})
    with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers={**SAME_ORIGIN}) as ws: ...

For timeouts, build the app with ``SessionConfig(clock=clock)`` where ``clock`` is a
:class:`FakeClock`, and move time with ``clock.advance(seconds)``. To test routes behind
a login without going through the login, :func:`create_session` stores a session for
a user and returns the value to put in the client's cookie: its ID, or with the cookie
store the sealed session itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

from ._ids import key_of, new_public_id, new_session_id, store_key
from ._persist import cookie_keys
from ._user_ids import check_user_id
from .config import SessionConfig
from .serializers import JSONSerializer, Serializer
from .stores.base import SessionRecord, Store, cookie_sealer_of

__all__ = [
    "SAME_ORIGIN",
    "TEST_BASE_URL",
    "TEST_WS_BASE_URL",
    "FakeClock",
    "create_session",
    "read_session",
    "set_session_cookie",
]

TEST_BASE_URL = "https://testserver"
TEST_WS_BASE_URL = "wss://testserver"
# What a browser sends with a request made by the app's own pages.
SAME_ORIGIN: dict[str, str] = {"sec-fetch-site": "same-origin"}


class FakeClock:
    """A wall clock that moves only when told, for ``SessionConfig(clock=...)``.

    It starts at ``start`` (seconds since the epoch; now by default). Stores compare
    expiry with this clock too, so a session expires the moment the clock passes its
    deadline, without waiting.
    """

    def __init__(self, start: float | None = None) -> None:
        if start is not None and start <= 0:
            # A login stamped 0.0 would read as no login at all (see Session.authenticated_at).
            raise ValueError(f"a FakeClock starts after the epoch, not at {start!r}")
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward; it never goes back."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock({self.now!r})"


async def create_session(
    store: Store,
    *,
    user_id: str | None = None,
    data: Mapping[str, Any] | None = None,
    remember: bool = False,
    idle_timeout: float | timedelta | None = None,
    absolute_timeout: float | timedelta | None = None,
    config: SessionConfig | None = None,
    serializer: Serializer | None = None,
) -> str:
    """Store a session as a login would and return its cookie value (the ID; with the
    cookie store, the sealed session, which needs the app's ``secret_keys`` in ``config``):

        session_id = await create_session(store, user_id="alice", data={"cart": []})
        set_session_cookie(client, session_id, config)

    Give the app's ``config`` (its clock and limits decide the expiry) and, if the
    middleware has one, its ``serializer``. ``idle_timeout`` and ``absolute_timeout``
    shorten the limits as :meth:`Session.login` does. From a synchronous test, run it in the
    ``TestClient``'s event loop, which a Redis client you built yourself needs (a store
    made from a URL serves any loop):
    ``with TestClient(app) as client: client.portal.call(partial(create_session, ...))``.
    """
    if user_id is not None:
        user_id = check_user_id(user_id)  # as login() takes it
    if user_id is None and not data:
        raise ValueError(
            "an anonymous session without data would end at its first request: "
            "give user_id, data or both"
        )
    config = config or SessionConfig()
    idle, absolute = config.login_limits(remember, idle_timeout, absolute_timeout)
    encoded = (serializer or JSONSerializer()).dumps(dict(data or {}))
    now = config.clock()
    session_id = new_session_id()
    record = SessionRecord(
        key=store_key(session_id),
        public_id=new_public_id(),
        data=encoded,
        user_id=user_id,
        created_at=now,
        last_seen_at=now,
        expires_at=config.lifetime(remember, idle, absolute).deadline(now, now),
        remember=remember,
        user_agent="coatcheck.testing",
        authenticated_at=0.0 if user_id is None else now,
        idle_timeout=idle,
        absolute_timeout=absolute,
    )
    sealer = cookie_sealer_of(store)
    if sealer is not None:  # the cookie store: the record travels in the cookie
        keys = cookie_keys(config)
        return sealer(keys, config.cookie.name).seal(session_id, record)
    if config.encrypt_data:  # as the middleware would store it
        from ._data_sealing import sealing_data

        store = sealing_data(store, config.secret_keys)
    await store.save(record)
    return session_id


async def read_session(
    store: Store,
    value: str,
    *,
    config: SessionConfig | None = None,
    serializer: Serializer | None = None,
) -> dict[str, Any] | None:
    """The data of the live session a cookie's ``value`` names, None when there is
    none (unknown, expired or ended), to check what a request stored:

        await client.post("/cart/items", json={"item": "apple"})
        assert await read_session(store, client.cookies["__Host-session"]) == {...}

    Give the app's ``config`` (its clock and limits decide what is live; with the cookie
    store or ``encrypt_data``, its ``secret_keys`` open the data) and, if the middleware
    has one, its ``serializer``; data they cannot decode is a ``ValueError``. Reading
    changes nothing, not even the sliding expiry.
    """
    config = config or SessionConfig()
    now = config.clock()
    sealer = cookie_sealer_of(store)
    record: SessionRecord | None
    if sealer is not None:
        opened = sealer(cookie_keys(config), config.cookie.name).open(value)
        record = None if opened is None else opened[1]
    else:
        if config.encrypt_data:
            from ._data_sealing import sealing_data

            store = sealing_data(store, config.secret_keys)
        key = key_of(value)
        record = None if key is None else await store.load(key, now)
    if record is None:
        return None
    lifetime = config.lifetime(record.remember, record.idle_timeout, record.absolute_timeout)
    if now >= min(record.expires_at, lifetime.deadline(record.last_seen_at, record.created_at)):
        return None
    try:
        data: dict[str, Any] = (serializer or JSONSerializer()).loads(record.data)
    except ValueError:
        # The app would start an empty session here; a test more likely read with
        # other settings than the app's, which None would hide.
        raise ValueError(
            "the session's stored data cannot be decoded: give read_session the app's "
            "serializer= and config= (its secret_keys and encrypt_data)"
        ) from None
    return data


class _Cookies(Protocol):
    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None: ...


class _Client(Protocol):
    """An httpx client, or Starlette's ``TestClient``, which is one."""

    @property
    def cookies(self) -> _Cookies: ...

    @property
    def base_url(self) -> Any: ...


def set_session_cookie(client: _Client, value: str, config: SessionConfig | None = None) -> None:
    """Put ``value`` (from :func:`create_session`) in ``client``'s cookie jar as the app's
    own ``Set-Cookie`` would have.

    A plain ``client.cookies.set(name, value)`` files it under no domain, and the
    cookie of the app's next new ID (a login, ``regenerate()``) then goes beside it
    rather than over it: the client sends both, and coatcheck, seeing two different
    session cookies, reads neither.
    """
    host = client.base_url.host
    if ":" in host:  # an IPv6 address, which the jar keeps in brackets
        host = f"[{host}]"
    # How the standard library's cookie jar names a host without a dot.
    domain = host if "." in host else f"{host}.local"
    cookie = (config or SessionConfig()).cookie
    if cookie.domain:  # a Domain attribute: the jar files it under a leading dot
        domain = "." + cookie.domain.lstrip(".")
    client.cookies.set(cookie.name, value, domain=domain, path=cookie.path)
