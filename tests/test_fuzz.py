"""Junk in: never a 5xx, never a stray record, never a leaked secret.

Hypothesis throws arbitrary requests at a FastAPI app behind the middleware, with CSRF
protection on, on every store backend: methods real and invented, paths, query strings,
Cookie headers with the real session cookie name carrying junk, oversized, non-ASCII,
quoted, duplicated and control-byte values, the headers the CSRF check reads, and form
or multipart bodies split into chunks. The ASGI app is called directly, so nothing
normalises the input and every exception reaches the test. Every request must:

- be answered once, below 500;
- create no record unless it is a POST to a route that writes, and, when it carried no
  live session cookie, leave the cookie alone;
- get a new ID only in one hardened ``Set-Cookie`` with ``no-store``, naming a stored
  session, never an ID the client sent or one issued before;
- never see a session ID in a response body, nor have one honoured from anywhere but
  the Cookie header; after a login, the previous ID is dead.

A second test runs real traffic with logging at DEBUG and finds no session ID, store key
(beyond a short fingerprint) or CSRF token in any log line, error, response body or repr.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coatcheck import CSRFConfig, SessionConfig, SessionMiddleware, Store, _audit
from coatcheck._ids import key_of, store_key
from coatcheck.events import EventHook, SessionEvent
from coatcheck.exceptions import SerializationError, StoreError
from coatcheck.fastapi import CSRFToken, CurrentUser, RequiredUser, SessionDep
from coatcheck.session import Session

from .conftest import DownStore, client_for, frames_showing
from .store_kinds import STORE_KINDS, fresh_store

NAME = "__Host-session"
KEY = "fuzz-signing-key-" + "k" * 16
ORIGIN = b"https://testserver"

# Generated requests per store kind: 10,400 in all. The in-process stores are cheap;
# every request to a Redis kind costs a few round trips, the Cluster's the most.
BUDGETS = {"memory": 4000, "sqlite": 2400, "redis": 1400, "redis-cluster": 1200, "valkey": 1400}

# Only these routes may create a record, and only for POST.
WRITING = frozenset({"/login", "/write"})
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Each route with the methods it answers.
ROUTES = {
    "/untouched": ("GET",),
    "/read": ("GET", "HEAD"),
    "/me": ("GET",),
    "/csrf": ("GET",),
    "/login": ("POST",),
    "/write": ("POST",),
    "/logout": ("POST",),
    "/regenerate": ("POST",),
    "/noop": ("POST", "PUT", "PATCH", "DELETE"),
    "/form": ("POST",),
    "/devices": ("GET",),
    "/revoke-others": ("POST",),
    "/eager/read": ("GET",),
    "/any/thing": METHODS,
}


# -- the app -------------------------------------------------------------------------------


def make_app(
    store: Store, seen: list[Session] | None = None, events: Sequence[EventHook] = ()
) -> FastAPI:
    """Routes that ignore, read, write, log in, log out, rotate and revoke.

    ``seen`` collects every session a handler touched, so their ``repr`` can be checked.
    """
    app = FastAPI()

    def keep(session: Session) -> Session:
        if seen is not None:
            seen.append(session)
        return session

    @app.get("/untouched")
    async def untouched() -> PlainTextResponse:
        return PlainTextResponse("hello")

    @app.api_route("/read", methods=["GET", "HEAD"])
    async def read(session: SessionDep, user: CurrentUser) -> dict[str, Any]:
        return {"data": dict(keep(session)), "user": user}

    @app.get("/me")
    async def me(user: RequiredUser) -> dict[str, str]:
        return {"user": user}

    @app.get("/csrf")
    async def csrf(token: CSRFToken, session: SessionDep) -> dict[str, str]:
        keep(session)
        return {"token": token}

    @app.post("/login")
    async def login(request: Request, session: SessionDep) -> dict[str, str]:
        shortened = "short" in request.query_params  # limits of its own: newer formats
        keep(session).login(
            "alice",
            remember="remember" in request.query_params,
            idle_timeout=600 if shortened else None,
            absolute_timeout=3600 if shortened else None,
        )
        return {"user": "alice"}

    @app.post("/write")
    async def write(session: SessionDep) -> dict[str, int]:
        keep(session)["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @app.post("/logout")
    async def logout(session: SessionDep) -> Response:
        keep(session).logout()
        return Response(status_code=204)

    @app.post("/regenerate")
    async def regenerate(session: SessionDep) -> dict[str, str]:
        keep(session).regenerate()
        return {}

    @app.api_route("/noop", methods=["POST", "PUT", "PATCH", "DELETE"])
    async def noop(session: SessionDep) -> dict[str, str]:
        """Sets a key and takes it away again: nothing changed, nothing to store."""
        keep(session)["scratch"] = [1]
        del session["scratch"]
        return {}

    @app.post("/form")
    async def form(request: Request, session: SessionDep) -> Response:
        """Reads the body the CSRF check may have read first."""
        keep(session)
        try:
            async with request.form() as fields:
                names = sorted(fields.keys())
        except Exception:  # a junk body is the client's problem, not a server error
            return JSONResponse({"detail": "bad form"}, status_code=400)
        return JSONResponse({"fields": names, "user": session.user_id})

    @app.get("/devices")
    async def devices(session: SessionDep) -> list[str]:
        return [device.id for device in await keep(session).devices()]

    @app.post("/revoke-others")
    async def revoke_others(session: SessionDep) -> dict[str, int]:
        return {"revoked": await keep(session).revoke_others()}

    @app.get("/eager/read")
    async def eager_read(request: Request) -> dict[str, Any]:
        """Starlette-style synchronous ``request.session``: loaded before the handler."""
        return {"n": request.session.get("n")}

    @app.api_route("/any/{rest:path}", methods=list(METHODS))
    async def anything(rest: str, session: SessionDep) -> dict[str, Any]:
        return {"path": rest, "keys": sorted(keep(session))}

    config = SessionConfig(
        secret_keys=[KEY],
        eager_paths=["/eager"],
        # Small, so that bodies past the limit are cheap to generate.
        csrf=CSRFConfig(max_form_bytes=2048),
    )
    app.add_middleware(SessionMiddleware, store=store, config=config, events=events)
    return app


# -- calling it ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def set_cookies(self) -> list[str]:
        """Every ``Set-Cookie`` for the session cookie, whole."""
        return [
            value.decode("latin-1")
            for name, value in self.headers
            if name.lower() == b"set-cookie" and value.startswith(NAME.encode() + b"=")
        ]

    def session_cookies(self) -> list[str]:
        """The values those ``Set-Cookie`` headers give the session cookie."""
        return [header[len(NAME) + 1 :].split(";", 1)[0] for header in self.set_cookies()]


async def call(
    app: Callable[..., Awaitable[None]],
    *,
    method: str = "GET",
    path: str = "/",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[dict[str, Any]] | None = None,
) -> Reply:
    """One request through the ASGI app, exactly as given: no client normalises it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": quote(path, safe="/", errors="surrogateescape").encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers if headers is not None else [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }
    inbox = list(body or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, f"expected one response start, got {sent!r}"
    assert sent[0] is starts[0]
    assert sent[-1]["type"] == "http.response.body"
    assert not sent[-1].get("more_body", False)
    body_bytes = b"".join(m.get("body", b"") for m in sent[1:])
    return Reply(starts[0]["status"], list(starts[0].get("headers", [])), body_bytes)


SAME_ORIGIN = [(b"host", b"testserver"), (b"sec-fetch-site", b"same-origin")]


def with_cookie(session_id: str) -> list[tuple[bytes, bytes]]:
    return [*SAME_ORIGIN, (b"cookie", f"{NAME}={session_id}".encode())]


# -- what Hypothesis generates -------------------------------------------------------------

# Placeholders, filled in when the example runs: the session ID minted for it (or an
# unknown well-formed one), that ID minus its last character, a CSRF token for it, and
# a stateless pre-login token. Hypothesis cannot stumble on these byte strings.
ID = b"{{ID}}"
ID_SHORT = b"{{ID-1}}"
TOKEN = b"{{TOKEN}}"
ANON_TOKEN = b"{{ANON}}"

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CONTROL = st.sampled_from([b"\x00", b"\t", b"\r", b"\n", b"\r\n", b"\x0b", b"\x1f", b"\x7f"])


def mostly(value: Any, otherwise: st.SearchStrategy[Any], tenths: int) -> st.SearchStrategy[Any]:
    """``value`` in about ``tenths`` tenths of the draws, else a draw from ``otherwise``.

    (``st.one_of`` cannot weigh its branches; ``sampled_from`` picks evenly.) Shrinking
    goes towards ``value``, the plain case."""
    plain = st.just(value)
    picks = [True] * tenths + [False] * (10 - tenths)
    return st.sampled_from(picks).flatmap(lambda pick: plain if pick else otherwise)


junk_methods = st.one_of(
    st.sampled_from(METHODS),
    st.sampled_from(["get", "post", "Post", "TRACE", "CONNECT", "PROPFIND", "POST ", "", "\x00"]),
    st.text(TCHAR, min_size=1, max_size=12),
    st.text(max_size=8),
)

junk_paths = st.one_of(
    st.builds(lambda route, tail: route + tail, st.sampled_from(list(ROUTES)), st.text(max_size=8)),
    st.sampled_from(["/", "//login", "/login/", "/LOGIN", "/eager", "/eagerly", "/any/", "/%00"]),
    st.text(max_size=24).map(lambda text: "/" + text),
    st.text(max_size=8),
)


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """Mostly a route with a method it answers; otherwise junk in either or both."""
    path = draw(st.sampled_from([*ROUTES, "/login", "/write", "/read", "/me"]))
    method = draw(st.sampled_from(ROUTES[path]))
    shape = draw(st.integers(0, 9))
    if shape == 7:
        method = draw(junk_methods)
    elif shape == 8:
        path = draw(junk_paths)
    elif shape == 9:
        method, path = draw(junk_methods), draw(junk_paths)
    return method, path


# Printable ASCII, as an HTTP server delivers it: Starlette's own URL handling fails on
# raw non-UTF-8 query bytes before any middleware could matter.
queries = st.one_of(
    st.just(b""),
    st.sampled_from([b"_method=DELETE", b"remember=1", b"a=1&_method=PUT", b"x=%ff%00"]),
    st.sampled_from([b"short=1", b"remember=1&short=1"]),  # a login with limits of its own
    st.sampled_from([NAME.encode() + b"=" + ID, b"session=" + ID, b"sid=" + ID]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(str.encode),
)

session_values = mostly(
    ID,
    tenths=3,
    otherwise=st.one_of(
        st.sampled_from([b'"' + ID + b'"', ID + b" ", b" " + ID, ID + ID, ID_SHORT, ID + b"A"]),
        st.builds(
            lambda junk, at_end: ID + junk if at_end else junk + ID,
            st.binary(max_size=6),
            st.booleans(),
        ),
        st.builds(lambda control: ID + control, CONTROL),
        st.text(B64URL, min_size=43, max_size=43).map(str.encode),  # well-formed, never issued
        st.text(B64URL, min_size=41, max_size=45).map(str.encode),
        st.text(max_size=50).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=60),
        st.binary(min_size=1, max_size=8).map(lambda junk: b'"' + junk + b'"'),
        st.integers(4000, 20_000).map(lambda size: b"A" * size),
        st.sampled_from(
            [b"", b'""', b"\xc3\xa9" * 43, b"\xff" * 43, b"=" + ID, b"A" * 43 + b"\x00"]
        ),
    ),
)

NEAR_NAMES = [b"__host-session", b"__Host-session ", b" __Host-session", b"__Host-sessionX"]
NEAR_NAMES += [b"X__Host-session", b"session", b"__Host-SESSION", b"__Secure-session"]
session_names = mostly(NAME.encode(), tenths=7, otherwise=st.sampled_from(NEAR_NAMES))

cookie_parts = st.one_of(
    st.builds(lambda name, value: name + b"=" + value, session_names, session_values),
    st.builds(
        lambda name, value: name + b"=" + value, st.binary(max_size=10), st.binary(max_size=20)
    ),
    st.binary(max_size=20),
)

separators = st.sampled_from([b"; ", b";", b" ; ", b",", b";\t", b"\x00"])


@st.composite
def cookie_header(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(cookie_parts, max_size=4))
    header = b""
    for number, part in enumerate(parts):
        header += (draw(separators) if number else b"") + part
    return header


cookie_headers = mostly(
    [NAME.encode() + b"=" + ID], tenths=4, otherwise=st.lists(cookie_header(), max_size=3)
)

tokens = mostly(
    TOKEN,
    tenths=4,
    otherwise=st.one_of(
        st.just(ANON_TOKEN),
        st.sampled_from([TOKEN + b"A", TOKEN[:-1], b"", b"x" * 86, b"\xc3\xa9" * 43, b"=" * 86]),
        st.text(B64URL, min_size=86, max_size=86).map(str.encode),
        st.binary(max_size=100),
    ),
)

# A token field's value: raw bytes, or text that a browser would percent-encode in a
# urlencoded body and send as UTF-8 in a multipart one.
form_values: st.SearchStrategy[bytes | str] = mostly(
    TOKEN,
    tenths=4,
    otherwise=st.one_of(
        st.just(ANON_TOKEN),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
)


def urlencoded(value: bytes | str, rest: bytes = b"") -> bytes:
    if isinstance(value, str):
        value = quote(value.encode("utf-8", "surrogatepass")).encode()
    return b"csrf_token=" + value + rest


content_types = st.one_of(
    st.sampled_from([b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=B"]),
    st.sampled_from(
        [
            b"APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            b"multipart/form-data",
            b"multipart/form-data; boundary=",
            b"application/json",
            b"text/plain",
            b"",
        ]
    ),
    st.binary(max_size=40),
)


def multipart(value: bytes | str, pad: bytes = b"") -> bytes:
    """A multipart body with the token field, a file, and an optional padding field."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return (
        b'--B\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + value + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nfile\r\n"
        b'--B\r\nContent-Disposition: form-data; name="pad"\r\n\r\n' + pad + b"\r\n--B--\r\n"
    )


bodies = st.one_of(
    st.just(b""),
    st.builds(urlencoded, form_values, st.binary(max_size=20)),
    st.builds(multipart, form_values),
    st.builds(multipart, form_values, st.binary(max_size=12)),
    st.binary(max_size=200),
    st.integers(2049, 6000).map(lambda size: urlencoded(TOKEN, b"&pad=" + b"x" * size)),
)

header_values = {
    b"sec-fetch-site": st.one_of(
        st.sampled_from([b"same-origin", b"none", b"same-site", b"cross-site"]),
        st.sampled_from([b"Same-Origin", b"same-origin ", b"", b"same-origin, cross-site"]),
        st.binary(max_size=12),
    ),
    b"origin": mostly(
        ORIGIN,
        tenths=4,
        otherwise=st.one_of(
            st.sampled_from(
                [
                    b"null",
                    b"http://testserver",
                    b"https://testserver:443",
                    b"HTTPS://TESTSERVER",
                    b"https://testserver.evil.example",
                    b"https://evil.example",
                    b"",
                ]
            ),
            st.binary(max_size=30),
        ),
    ),
    b"x-csrf-token": tokens,
    b"x-http-method-override": st.one_of(
        st.sampled_from([b"DELETE", b"POST", b"GET", b""]), st.binary(max_size=8)
    ),
    b"x-http-method": st.binary(max_size=8),
    b"x-method-override": st.binary(max_size=8),
    b"content-type": content_types,
    b"user-agent": st.one_of(st.binary(max_size=40), st.binary(min_size=256, max_size=600)),
    b"referer": st.binary(max_size=40),
}

header_names = st.one_of(
    st.sampled_from([*header_values, b"cookie", b"host", b"content-length", b"transfer-encoding"]),
    st.binary(min_size=1, max_size=12).map(bytes.lower),
)


@dataclass(frozen=True)
class Case:
    """One generated request; ``mint`` says which session its placeholders stand for."""

    mint: str | None  # None (a never-issued ID), "anonymous", "user", or "ended" (logged out)
    unknown_id: str
    method: str
    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    chunks: tuple[bytes, ...]
    disconnect: bool = False

    @property
    def junk(self) -> bool:
        """No live session cookie can be in it: nothing may be stored but by a write."""
        return self.mint in (None, "ended")

    @property
    def may_write(self) -> bool:
        return self.method == "POST" and self.path in WRITING


ID_ELSEWHERE = [
    (b"authorization", b"Bearer " + ID),
    (b"x-session-id", ID),
    (b"cookie2", NAME.encode() + b"=" + ID),
    (b"set-cookie", NAME.encode() + b"=" + ID),
    (b"x-forwarded-cookie", NAME.encode() + b"=" + ID),
]

# How a request vouches for itself against CSRF; each mode reaches one branch of the check.
MODES = ("fetch-metadata", "origin", "header-token", "form-token", "none", "anything")


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mint = draw(st.sampled_from([None, "user", "anonymous", "ended"]))
    method, path = draw(targets())
    headers: list[tuple[bytes, bytes]] = []
    host = draw(
        mostly(b"testserver", tenths=8, otherwise=st.one_of(st.none(), st.binary(max_size=20)))
    )
    if host is not None:
        headers.append((b"host", host))
    if draw(st.integers(0, 4)):
        headers += [(b"cookie", value) for value in draw(cookie_headers)]
    else:  # the ID travels anywhere but in a Cookie header, where it must be ignored
        headers += [
            (b"cookie", value) for value in draw(st.lists(st.binary(max_size=30), max_size=1))
        ]
        headers.append(draw(st.sampled_from(ID_ELSEWHERE)))
    mode = draw(st.sampled_from(MODES))
    body = b""
    if mode == "fetch-metadata":
        site = draw(mostly(b"same-origin", tenths=4, otherwise=header_values[b"sec-fetch-site"]))
        headers.append((b"sec-fetch-site", site))
    elif mode in ("origin", "header-token"):
        name = b"origin" if mode == "origin" else b"x-csrf-token"
        headers.append((name, draw(header_values[name])))
    elif mode == "form-token":
        value = draw(form_values)
        pad = b"x" * draw(mostly(0, tenths=8, otherwise=st.integers(2049, 5000)))
        if draw(st.booleans()):
            body = urlencoded(value, b"&pad=" + pad)
            content_type = b"application/x-www-form-urlencoded"
        else:
            body = multipart(value, pad)
            content_type = b"multipart/form-data; boundary=B"
        headers.append(
            (b"content-type", draw(mostly(content_type, tenths=7, otherwise=content_types)))
        )
    elif mode == "anything":
        chosen = draw(st.sets(st.sampled_from(list(header_values)), max_size=len(header_values)))
        headers += [(name, draw(header_values[name])) for name in sorted(chosen)]
        body = draw(bodies)
    extra_values = st.one_of(
        st.binary(max_size=30), st.just(ID), st.just(NAME.encode() + b"=" + ID)
    )
    headers += draw(st.lists(st.tuples(header_names, extra_values), max_size=2))
    if draw(st.integers(0, 3)) == 3:
        headers = draw(st.permutations(headers))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    chunks = tuple(body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True))
    return Case(
        mint=mint,
        unknown_id=draw(st.text(B64URL, min_size=43, max_size=43)),
        method=method,
        path=path,
        query=draw(queries),
        headers=tuple(headers),
        chunks=chunks,
        disconnect=draw(st.integers(0, 19)) == 19,
    )


# -- running one example -------------------------------------------------------------------


@dataclass
class Target:
    """One app and one store, reused by every example of a store kind."""

    store: Store
    app: FastAPI = field(init=False)
    anonymous_token: bytes = b""
    issued: set[str] = field(default_factory=set)  # every ID handed out, to prove none repeats

    def __post_init__(self) -> None:
        self.app = make_app(self.store)

    async def start(self) -> None:
        reply = await call(self.app, path="/csrf", headers=SAME_ORIGIN)
        assert reply.status == 200
        self.anonymous_token = _token(reply)
        assert await self.store.count(_now()) == 0, "rendering a token must store nothing"

    async def mint(self, case: Case) -> tuple[str, bytes]:
        """The session ID the example's placeholders name, and a CSRF token for it."""
        if case.mint is None:
            return case.unknown_id, self.anonymous_token
        path = "/write" if case.mint == "anonymous" else "/login"
        minted = await call(self.app, method="POST", path=path, headers=SAME_ORIGIN)
        (session_id,) = minted.session_cookies()
        assert session_id not in self.issued, "an ID was issued twice"
        self.issued.add(session_id)
        token = self.anonymous_token
        if any(TOKEN in part for part in (*(value for _, value in case.headers), *case.chunks)):
            token = _token(await call(self.app, path="/csrf", headers=with_cookie(session_id)))
        if case.mint == "ended":
            ended = await call(
                self.app, method="POST", path="/logout", headers=with_cookie(session_id)
            )
            assert ended.status == 204
        return session_id, token

    async def run(self, case: Case) -> None:
        session_id, token = await self.mint(case)
        fill = {
            ID: session_id.encode(),
            ID_SHORT: session_id[:-1].encode(),
            TOKEN: token,
            ANON_TOKEN: self.anonymous_token,
        }

        def filled(raw: bytes) -> bytes:
            for marker, value in fill.items():
                raw = raw.replace(marker, value)
            return raw

        headers = [(name, filled(value)) for name, value in case.headers]
        cookies = [value for name, value in headers if name == b"cookie"]
        messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": filled(chunk), "more_body": True}
            for chunk in case.chunks
        ]
        if case.disconnect:
            messages[len(messages) // 2 :] = [{"type": "http.disconnect"}]
        else:
            messages[-1]["more_body"] = False

        before = await self.store.count(_now())
        reply = await call(
            self.app,
            method=case.method,
            path=case.path,
            query=filled(case.query),
            headers=headers,
            body=messages,
        )
        after = await self.store.count(_now())

        assert reply.status < 500, reply
        issued = reply.session_cookies()
        assert len(issued) <= 1, f"more than one Set-Cookie for the session: {issued}"
        for header in reply.set_cookies():
            assert header.endswith("; Path=/; HttpOnly; Secure; SameSite=Lax"), header
            assert (b"cache-control", b"no-store") in reply.headers
        sent = b" ".join(cookies)
        new_ids = [value for value in issued if value]
        for new_id in new_ids:
            assert key_of(new_id) == store_key(new_id), new_id
            assert new_id.encode() not in sent, "the server adopted an ID the client chose"
            assert new_id not in self.issued, "an ID was issued twice"
            self.issued.add(new_id)
            assert await self.store.load(store_key(new_id), _now()) is not None
        for secret in {session_id, *new_ids}:
            assert secret.encode() not in reply.body, "a session ID in a response body"
        if case.path == "/me" and reply.status == 200:
            # The only logged-in session is the minted one: it came in a Cookie header,
            # not in the URL or any other header.
            assert session_id.encode() in sent, "a session ID taken from outside the cookie"
        if case.may_write and case.path == "/login" and reply.status == 200:
            assert new_ids, "a login that kept the ID it came with"
            if cookies == [f"{NAME}={session_id}".encode()]:
                old = await self.store.load(store_key(session_id), _now())
                assert old is None, "the ID from before the login still works"
        if case.junk and not case.may_write:
            assert after == before, f"{case.method} {case.path} created a record"
            assert not issued, f"{case.method} {case.path} touched the cookie: {issued}"
        elif not case.may_write:
            assert after <= before, f"{case.method} {case.path} created a record"
            assert session_id not in new_ids
        else:
            assert after <= before + 1
            if after == before + 1:
                assert new_ids, "a new record but no cookie to reach it"

        for doomed in {session_id, *new_ids}:  # keep the store small: counts stay cheap
            await self.store.delete(store_key(doomed))


def _now() -> float:
    return time.time()


def _token(reply: Reply) -> bytes:
    match = re.search(rb'"token":"([A-Za-z0-9_-]{86})"', reply.body)
    assert match is not None, reply
    return match.group(1)


@pytest.fixture
def security_log_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh budget of security log lines for this test, and the old one back after it:
    earlier floods must not mute this test's lines, nor this test's flood later tests'."""
    monkeypatch.setattr(_audit, "_budgets", {})


@pytest.mark.parametrize("kind", STORE_KINDS)
@pytest.mark.usefixtures("security_log_budget")
def test_junk_requests_never_fail_and_never_store(kind: str) -> None:
    budget = BUDGETS.get(kind, 1000)
    # The store and the app live on one event loop in a portal thread for the whole run;
    # Hypothesis drives the examples from this thread, one blocking call each.
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(fresh_store(kind)) as store,
    ):
        target = Target(store)
        portal.call(target.start)

        @settings(
            max_examples=budget,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases())
        def fuzz(case: Case) -> None:
            portal.call(target.run, case)

        fuzz()


# -- nothing secret in logs, error bodies or reprs -----------------------------------------


@pytest.mark.anyio
async def test_no_frame_holds_an_id_while_the_store_is_asked() -> None:
    """Error trackers (Sentry, by default) send the locals of each frame an error went
    through. The ID a cookie brings, and one a login mints, wait on the session while
    coatcheck's frames ask the store: a handler that reports a store error it caught
    sends neither."""
    store = DownStore()
    caught: list[tuple[StoreError, str]] = []
    app = FastAPI()

    @app.post("/write")
    async def write(session: SessionDep) -> dict[str, bool]:
        session["n"] = 1
        return {"ok": True}

    @app.get("/read")
    async def read(request: Request) -> dict[str, bool]:
        store.down = True
        try:
            await Session.of(request).load()
        except StoreError as exc:
            caught.append((exc, request.cookies[NAME]))
        finally:
            store.down = False
        return {"ok": True}

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, bool]:
        session.login("alice")
        store.down = True
        try:
            await session.save()
        except StoreError as exc:
            assert session._id is not None
            caught.append((exc, session._id))  # the ID the login minted
        finally:
            store.down = False
        return {"ok": True}

    app.add_middleware(SessionMiddleware, store=store)
    async with client_for(app) as client:
        first = (await client.post("/write")).cookies[NAME]
        await client.get("/read", headers={"cookie": f"{NAME}={first}"})
        await client.post("/login", headers={"cookie": f"{NAME}={first}"})
    assert [frames_showing(error, secret) for error, secret in caught] == [[], []]


# A short fingerprint of a store key (its first 16 hex digits) may be logged; more may not.
FINGERPRINT = 16


def windows(secret: str, size: int) -> set[str]:
    return {secret[at : at + size] for at in range(len(secret) - size + 1)}


@pytest.mark.anyio
@pytest.mark.usefixtures("security_log_budget")
async def test_ids_and_tokens_never_reach_logs_error_bodies_or_reprs(
    any_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Log in, read, write, rotate, fail CSRF checks, send bad cookies, hit a 409, a 413,
    an unstorable value and an undecodable record, with every logger at DEBUG; then look
    for any 12 characters of an issued ID, 16 of a CSRF token, or 17 hex digits of a
    store key, in the logs, error bodies, response bodies, events and session reprs."""
    caplog.set_level(logging.DEBUG)
    seen: list[Session] = []
    events: list[SessionEvent] = []

    async def audit(event: SessionEvent) -> None:
        events.append(event)

    app = make_app(any_store, seen, events=[audit])

    @app.post("/ended-midway")
    async def ended_midway(session: SessionDep) -> dict[str, str]:
        """A logout lands while this request runs: its save is refused with 409."""
        assert session._stored is not None
        await any_store.delete(session._stored.key)
        session["late"] = True
        return {}

    @app.post("/grow")
    async def grow(session: SessionDep) -> dict[str, str]:
        session["big"] = "x" * 70_000  # past max_session_bytes: 413
        return {}

    @app.post("/bad-value")
    async def bad_value(session: SessionDep) -> dict[str, str]:
        session["when"] = datetime.now(timezone.utc)  # not JSON: the save raises
        return {}

    ids: list[str] = []
    tokens: list[str] = []
    bodies: list[str] = []
    errors: list[str] = []

    def note(response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            value = header.split(";", 1)[0].split("=", 1)[1]
            if value:
                ids.append(value)
        bodies.append(response.text)
        if response.status_code >= 400:
            errors.append(response.text)
        elif response.request.url.path == "/csrf":
            tokens.append(response.json()["token"])
        return response

    def jar(session_id: str, extra: str = "") -> dict[str, str]:
        return {"cookie": f"{NAME}={session_id}{extra}"}

    async with client_for(app) as browser, client_for(app) as script:
        del script.headers["sec-fetch-site"]  # a client that sends no browser headers
        note(await browser.get("/csrf"))  # a stateless token, before any session
        note(await browser.post("/write"))
        first = ids[-1]
        note(await browser.get("/csrf", headers=jar(first)))
        note(await browser.post("/login?remember=1", headers=jar(first)))
        alice = ids[-1]
        note(await browser.get("/csrf", headers=jar(alice)))
        bound = tokens[-1]
        note(await script.post("/write", headers={**jar(alice), "x-csrf-token": bound}))
        note(await script.post("/form", headers=jar(alice), data={"csrf_token": bound, "a": "1"}))
        # CSRF failures: cross-site, a foreign origin, no token, a damaged token, the
        # pre-login token on a logged-in session, another session's token.
        note(await browser.post("/write", headers={**jar(alice), "sec-fetch-site": "cross-site"}))
        note(await script.post("/write", headers={**jar(alice), "origin": "https://evil.example"}))
        note(await script.post("/write", headers=jar(alice)))
        damaged = bound[:40] + ("A" if bound[40] != "A" else "B") + bound[41:]
        note(await script.post("/write", headers={**jar(alice), "x-csrf-token": damaged}))
        note(await script.post("/write", headers={**jar(alice), "x-csrf-token": tokens[0]}))
        note(await script.post("/write", headers={**jar(first), "x-csrf-token": bound}))
        note(await script.post("/form", headers=jar(alice), data={"csrf_token": damaged}))
        # Bad cookies: the rotated-away ID, the live one quoted, padded, twice with
        # another, inside an oversized header, next to non-ASCII.
        for cookie in (
            jar(first),
            {"cookie": f'{NAME}="{alice}"'},
            jar(alice, "x"),
            {"cookie": f"{NAME}={alice}; {NAME}={first}"},
            {"cookie": f"pad={'p' * 70_000}; {NAME}={alice}"},
            {"cookie": f"{NAME}={alice}; x=\u00e9".encode()},
        ):
            note(await browser.get("/me", headers=cookie))  # type: ignore[arg-type]
            note(await browser.post("/write", headers=cookie))  # type: ignore[arg-type]
        note(await browser.get("/devices", headers=jar(alice)))
        note(await browser.post("/revoke-others", headers=jar(alice)))
        note(await browser.post("/regenerate", headers=jar(alice)))
        rotated = ids[-1]
        note(await browser.post("/grow", headers=jar(rotated)))
        note(await browser.post("/ended-midway", headers=jar(rotated)))
        note(await browser.post("/login"))
        bob = ids[-1]
        with pytest.raises(SerializationError) as unstorable:
            await browser.post("/bad-value", headers=jar(bob))
        errors.append(f"{unstorable.value!s} {unstorable.value!r}")
        # A record whose data cannot be decoded: logged by its public id.
        record = await any_store.load(store_key(bob), time.time())
        assert record is not None
        await any_store.save(record._replace(data=b"\x80not json", version=record.version + 1))
        note(await browser.get("/read", headers=jar(bob)))
        note(await browser.post("/login"))
        note(await browser.post("/logout", headers=jar(ids[-1])))

    assert len(set(ids)) >= 5
    assert len(set(tokens)) == 3
    assert len(errors) >= 10
    assert any(record.name == "coatcheck.security" for record in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logs = [formatter.format(record) for record in caplog.records]
    reprs = [repr(session) for session in seen] + [repr(event) for event in events]
    assert events
    # Tokens are meant to be in /csrf bodies; nothing else may hold any part of a secret.
    places = [("log", logs), ("error body", errors), ("repr", reprs), ("response body", bodies)]
    for where, texts in places:
        haystack = "\n".join(texts)
        for secret in ids:
            for piece in windows(secret, 12):
                assert piece not in haystack, f"part of a session ID in a {where}: {piece}"
            for piece in windows(store_key(secret), FINGERPRINT + 1):
                assert where != "log" or piece not in haystack, f"a store key in a log: {piece}"
        if where == "response body":
            continue
        for token in [*tokens, damaged]:
            for piece in windows(token, 16):
                assert piece not in haystack, f"part of a CSRF token in a {where}: {piece}"
