"""CSRF protection: on by default, bound to the session, never a 5xx."""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

import httpx
import jinja2
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from coatcheck import (
    CookieConfig,
    CSRFConfig,
    MemoryStore,
    SessionConfig,
    SessionMiddleware,
    Store,
    _audit,
)
from coatcheck.fastapi import CSRFToken, SessionDep
from coatcheck.session import Session
from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, TEST_WS_BASE_URL, FakeClock

from .conftest import client_for

pytestmark = pytest.mark.anyio

KEY_A = "a" * 32
KEY_B = "b" * 32
NAME = "__Host-session"


def make_app(
    store: Store | None = None,
    *,
    clock: FakeClock | None = None,
    keys: list[str] | None = None,
    **csrf: object,
) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        return {"user": "alice"}

    @app.post("/login/api")
    async def login_for_api(session: SessionDep) -> dict[str, str]:
        session.login("alice")
        return {"token": session.csrf_token()}

    @app.post("/cart")
    async def add(request: Request, session: SessionDep) -> dict[str, object]:
        async with request.form() as form:
            item = form.get("item")
        session.modify("cart", lambda cart: [*cart, item], default=[])
        return {"cart": session["cart"]}

    @app.delete("/cart")
    async def empty(session: SessionDep) -> dict[str, object]:
        session.pop("cart", None)
        return {}

    @app.api_route("/anything", methods=["GET", "POST"])
    async def anything(session: SessionDep) -> dict[str, object]:
        session["touched"] = True
        return {}

    @app.post("/hooks/payment")
    async def webhook() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/csrf")
    async def token(value: CSRFToken) -> dict[str, str]:
        return {"token": value}

    @app.get("/state")
    async def state(session: SessionDep) -> dict[str, object]:
        return {"data": dict(session), "user": session.user_id}

    @app.websocket("/ws")
    @app.websocket("/hooks/ws")
    async def socket(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        await websocket.send_json({"user": session.user_id})
        await websocket.close()

    config = SessionConfig(
        secret_keys=keys or [KEY_A],
        csrf=CSRFConfig(**{"exempt_paths": ["/hooks/"], **csrf}),
        clock=clock or time.time,
    )
    app.add_middleware(SessionMiddleware, store=store or MemoryStore(), config=config)
    return app


def no_browser(app: Any) -> httpx.AsyncClient:
    """A client that sends neither Sec-Fetch-Site nor Origin: a script, or curl."""
    client = client_for(app)
    del client.headers["sec-fetch-site"]
    return client


async def logged_in(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/login", headers={"sec-fetch-site": "same-origin"})
    value = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    return {"cookie": f"{NAME}={value}"}


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


@pytest.fixture
def app() -> FastAPI:
    return make_app()


async def test_cross_site_posts_and_deletes_are_refused_and_change_nothing(app: FastAPI) -> None:
    async with client_for(app) as client:
        alice = await logged_in(client)
        await client.post("/cart", data={"item": "apple"}, headers=alice)
        for method in ("POST", "DELETE"):
            response = await client.request(
                method, "/cart", data={"item": "evil"} if method == "POST" else None,
                headers={**alice, "sec-fetch-site": "cross-site"},
            )  # fmt: skip
            assert response.status_code == 403
            assert response.json() == {"detail": "CSRF check failed: cross-site request"}
            assert "set-cookie" not in response.headers
        state = (await client.get("/state", headers=alice)).json()
    assert state == {"data": {"cart": ["apple"]}, "user": "alice"}


@pytest.mark.parametrize("site", ["same-origin", "none"])
async def test_same_origin_and_user_initiated_requests_pass(app: FastAPI, site: str) -> None:
    async with client_for(app) as client:
        alice = await logged_in(client)
        response = await client.post(
            "/cart", data={"item": "pear"}, headers={**alice, "sec-fetch-site": site}
        )
    assert response.status_code == 200


async def test_same_site_passes_only_when_siblings_are_trusted() -> None:
    for trust, status in ((False, 403), (True, 200)):
        async with client_for(make_app(trust_same_site=trust)) as client:
            alice = await logged_in(client)
            response = await client.post(
                "/anything", headers={**alice, "sec-fetch-site": "same-site"}
            )
        assert response.status_code == status
        if status == 403:
            # Most often the app's own front end on a dev server's port: how to trust it.
            detail = response.json()["detail"]
            assert detail.startswith("CSRF check failed: same-site request from another origin")
            assert "CSRFConfig(origins=[...])" in detail


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://testserver", 200),
        ("null", 403),
        ("http://testserver", 403),
        ("https://testserver:8443", 403),
        ("https://testserver.evil.example", 403),
        ("https://evil.example", 403),
        ("https://xtestserver", 403),
    ],
)
async def test_without_fetch_metadata_the_origin_must_match_exactly(
    app: FastAPI, origin: str, status: int
) -> None:
    async with no_browser(app) as client:
        alice = await logged_in(client)
        response = await client.post("/anything", headers={**alice, "origin": origin})
    assert response.status_code == status


async def refused_origin(app: FastAPI, origin: str) -> httpx.Response:
    """A logged-in POST from a client without fetch metadata, sending ``origin``."""
    async with no_browser(app) as client:
        alice = await logged_in(client)
        return await client.post("/anything", headers={**alice, "origin": origin})


async def test_a_refused_origin_says_what_it_was_held_to(app: FastAPI) -> None:
    """Behind a proxy that does not pass on the browser's Host and scheme (nginx's own
    WebSocket example), every handshake is refused: the answer says what to look at,
    without echoing what the client sent."""
    refused = await refused_origin(app, "https://app.example")
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "CSRF check failed: origin not allowed: not the app's own as the app sees it (from "
        "the Host header and the scheme), nor one listed in CSRFConfig(origins=[...]); behind "
        "a proxy that changes the host or scheme, pass on Host and X-Forwarded-Proto"
    )
    assert "app.example" not in refused.text


async def test_a_refused_origin_under_a_list_says_the_list_replaces_the_apps_own() -> None:
    own = await refused_origin(
        make_app(origins=["https://front.example.com"]), "https://testserver"
    )
    assert own.status_code == 403
    assert own.json()["detail"] == (
        "CSRF check failed: origin not allowed: not one listed in CSRFConfig(origins=[...]), "
        "which replaces the app's own origin: list that one too"
    )


async def test_configured_origins_replace_the_host_header() -> None:
    app = make_app(origins=["https://app.example.com"])
    async with no_browser(app) as client:
        alice = await logged_in(client)
        ok = await client.post("/anything", headers={**alice, "origin": "https://app.example.com"})
        own = await client.post("/anything", headers={**alice, "origin": "https://testserver"})
    assert (ok.status_code, own.status_code) == (200, 403)


async def test_configured_origins_are_compared_without_case_or_a_trailing_slash() -> None:
    app = make_app(origins=["HTTPS://App.Example.com/"])
    async with no_browser(app) as client:
        alice = await logged_in(client)
        response = await client.post(
            "/anything", headers={**alice, "origin": "https://app.example.com"}
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        # A front end on a sibling host the app lists, in a browser of today...
        ({"sec-fetch-site": "same-site", "origin": "https://www.example.com"}, 200),
        # ...or on another site altogether that the app lists: trusted all the same.
        ({"sec-fetch-site": "cross-site", "origin": "https://partner.example.net"}, 200),
        ({"origin": "https://www.example.com"}, 200),  # an older browser
        ({"sec-fetch-site": "same-site", "origin": "https://other.example.com"}, 403),
        ({"sec-fetch-site": "cross-site", "origin": "https://evil.example"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
    ],
)
async def test_a_listed_origin_passes_whatever_sec_fetch_site_says(
    headers: dict[str, str], status: int
) -> None:
    """As Django's CSRF_TRUSTED_ORIGINS and Go's trusted origins: otherwise the same
    request would pass in an old browser and fail in a new one, or the reverse."""
    origins = ["https://app.example.com", "https://www.example.com", "https://partner.example.net"]
    async with no_browser(make_app(origins=origins)) as client:
        alice = await logged_in(client)
        response = await client.post("/anything", headers={**alice, **headers})
    assert response.status_code == status


def test_a_websocket_from_a_listed_sibling_passes_without_sec_fetch_site() -> None:
    """Chromium sends only Origin on a handshake: listing the sibling admits it."""
    sibling = {"origin": "https://www.example.com"}
    assert websocket_user(make_app(), "/ws", sibling) == 1008
    listed = make_app(origins=["https://testserver", "https://www.example.com"])
    assert websocket_user(listed, "/ws", sibling) == "alice"


async def test_clients_without_browser_headers_need_the_token(app: FastAPI) -> None:
    async with no_browser(app) as client:
        alice = await logged_in(client)
        missing = await client.post("/anything", headers=alice)
        assert missing.status_code == 403
        assert missing.json()["detail"] == "CSRF check failed: missing CSRF token"
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        header = await client.post("/anything", headers={**alice, "x-csrf-token": token})
        form = await client.post("/cart", data={"item": "kiwi", "csrf_token": token}, headers=alice)
        multipart = await client.post(
            "/cart", data={"item": "fig", "csrf_token": token}, files={"f": b"x"}, headers=alice
        )
        wrong = await client.post("/anything", headers={**alice, "x-csrf-token": "x" * 86})
        garbage = await client.post("/anything", headers={**alice, "x-csrf-token": "é".encode()})
    assert header.status_code == 200
    assert form.status_code == 200
    assert form.json() == {"cart": ["kiwi"]}  # the app still read the body the check read
    assert multipart.status_code == 200
    assert multipart.json() == {"cart": ["kiwi", "fig"]}
    assert (wrong.status_code, garbage.status_code) == (403, 403)


async def test_a_custom_token_header_is_found_whatever_its_case() -> None:
    async with no_browser(make_app(header_name="X-Custom-CSRF")) as client:
        alice = await logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        response = await client.post("/anything", headers={**alice, "X-Custom-CSRF": token})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "token", ["A" * 84 + "!!", "!" * 86, "A" * 80 + "~" * 6], ids=["two", "all", "six"]
)
async def test_tokens_of_the_right_length_with_foreign_characters_are_refused(
    app: FastAPI, token: str
) -> None:
    # base64 decoding skips such characters, leaving too few bytes to unmask.
    stale = {"cookie": f"{NAME}={'Q' * 43}", "x-csrf-token": token}
    async with no_browser(app) as client:
        alice = await logged_in(client)
        bound = await client.post("/anything", headers={**alice, "x-csrf-token": token})
        anonymous = await client.post("/anything", headers=stale)
    assert (bound.status_code, anonymous.status_code) == (403, 403)


async def test_a_form_is_searched_for_the_token_only_up_to_max_form_bytes() -> None:
    limit = 200
    form = {"content-type": "application/x-www-form-urlencoded"}
    async with no_browser(make_app(max_form_bytes=limit)) as client:
        alice = await logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        fields = f"csrf_token={token}&item=".encode()
        answers = [
            await client.post(
                "/anything",
                content=fields + b"x" * (size - len(fields)),
                headers={**alice, **form},
            )
            for size in (limit, limit + 1)
        ]
    assert [answer.status_code for answer in answers] == [200, 403]
    # Not "missing": the token may well be there, and the header is the way to send it.
    assert answers[1].json()["detail"] == (
        "CSRF check failed: form body over max_form_bytes (200), not searched for the"
        " CSRF token: send it in the x-csrf-token header"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("{junk}&csrf_token={token}", 200),  # after 100,000 fields, as the browser put it
        ("csrf_token={token}&csrf_token=forged", 200),  # the first one counts
        ("csrf_token=forged&csrf_token={token}", 403),
        ("xcsrf_token={token}", 403),  # another field whose name ends like it
        ("note=csrf_token={token}", 403),  # or a value that reads like it
        ("csrf_token=%{token}", 403),
        ("item=a+b&csrf_token={token}&", 200),
    ],
)
async def test_a_form_token_is_found_as_a_browser_sends_it(body: str, status: int) -> None:
    """Searched for, not parsed: a junk body of 100,000 fields cost a second of CPU
    to parse field by field, for any client that sends a session cookie."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    async with no_browser(make_app(max_form_bytes=1_000_000)) as client:
        alice = await logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        content = body.format(junk="a&" * 100_000, token=token).encode()
        response = await client.post("/anything", content=content, headers={**alice, **form})
    assert response.status_code == status


async def test_a_multipart_body_without_the_field_is_not_parsed(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Its parser logs a warning for each malformed body, which any client could send."""
    junk = {"content-type": "multipart/form-data; boundary=xyz"}
    async with no_browser(app) as client:
        alice = await logged_in(client)
        with caplog.at_level(logging.DEBUG):
            response = await client.post("/anything", content=b"garbage", headers={**alice, **junk})
    assert response.json()["detail"] == "CSRF check failed: missing CSRF token"
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]


async def test_tokens_are_compared_in_constant_time(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No test can time the comparison; it can see that compare_digest made it.
    compared: list[object] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    async with no_browser(app) as client:
        anonymous = (await client.get("/csrf")).json()["token"]
        alice = await logged_in(client)
        bound = (await client.get("/csrf", headers=alice)).json()["token"]
        monkeypatch.setattr(hmac, "compare_digest", spy)
        stale = {"cookie": f"{NAME}={'Q' * 43}"}
        for headers in ({**alice, "x-csrf-token": bound}, {**stale, "x-csrf-token": anonymous}):
            compared.clear()
            assert (await client.post("/anything", headers=headers)).status_code == 200
            assert compared


async def test_tokens_are_masked_differently_every_time(app: FastAPI) -> None:
    async with no_browser(app) as client:
        alice = await logged_in(client)
        tokens = {(await client.get("/csrf", headers=alice)).json()["token"] for _ in range(5)}
        assert len(tokens) == 5
        for token in tokens:
            response = await client.post("/anything", headers={**alice, "x-csrf-token": token})
            assert response.status_code == 200


async def test_a_token_is_bound_to_its_session_and_dies_at_login(app: FastAPI) -> None:
    async with no_browser(app) as client:
        alice = await logged_in(client)
        other = await logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
        stolen = await client.post("/anything", headers={**other, "x-csrf-token": token})
        assert stolen.status_code == 403
        again = await client.post("/login", headers={**alice, "x-csrf-token": token})
        relogged = {"cookie": again.headers["set-cookie"].split(";", 1)[0]}
        stale = await client.post("/anything", headers={**relogged, "x-csrf-token": token})
        assert stale.status_code == 403


async def test_a_token_issued_with_the_login_answer_works_after_it(app: FastAPI) -> None:
    async with no_browser(app) as client:
        login = await client.post("/login/api")
        cookie = {"cookie": login.headers["set-cookie"].split(";", 1)[0]}
        response = await client.post(
            "/anything", headers={**cookie, "x-csrf-token": login.json()["token"]}
        )
    assert response.status_code == 200


async def test_before_login_a_stateless_token_works_and_creates_no_record() -> None:
    store = MemoryStore()
    app = make_app(store)
    async with no_browser(app) as client:
        token = (await client.get("/csrf")).json()["token"]
        assert await store.count(0) == 0  # rendering a form stored nothing
        stale_cookie = {"cookie": f"{NAME}={'Q' * 43}"}  # a cookie that matches nothing
        missing = await client.post("/anything", headers=stale_cookie)
        ok = await client.post("/anything", headers={**stale_cookie, "x-csrf-token": token})
    assert (missing.status_code, ok.status_code) == (403, 200)


async def test_a_logged_in_session_refuses_a_stateless_token(app: FastAPI) -> None:
    async with no_browser(app) as client:
        anonymous = (await client.get("/csrf")).json()["token"]
        alice = await logged_in(client)
        response = await client.post("/anything", headers={**alice, "x-csrf-token": anonymous})
    assert response.status_code == 403


async def test_an_anonymous_session_with_data_takes_its_own_token(app: FastAPI) -> None:
    async with no_browser(app) as client:
        first = await client.post("/cart", data={"item": "apple"})  # no cookie yet: passes
        shopper = {"cookie": first.headers["set-cookie"].split(";", 1)[0]}
        token = (await client.get("/csrf", headers=shopper)).json()["token"]
        missing = await client.post("/anything", headers=shopper)
        response = await client.post("/anything", headers={**shopper, "x-csrf-token": token})
    assert (missing.status_code, response.status_code) == (403, 200)


async def test_login_csrf_from_another_site_is_refused(app: FastAPI) -> None:
    async with client_for(app) as client:
        forged = await client.post("/login", headers={"sec-fetch-site": "cross-site"})
    async with no_browser(app) as client:
        by_origin = await client.post("/login", headers={"origin": "https://evil.example"})
    assert forged.status_code == by_origin.status_code == 403
    assert "set-cookie" not in forged.headers


async def test_a_refusal_is_logged_with_the_clients_path_escaped(
    app: FastAPI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is the client's: a newline in it must not forge a second log line, nor
    an escape sequence reach the terminal that tails the log."""
    monkeypatch.setattr(_audit, "_budgets", {})  # the limiter must not drop this line
    path = "/login%0A2026-11-27 INFO coatcheck.security: all is well%1B[2J"
    async with client_for(app) as client:
        forged = await client.post(path, headers={"sec-fetch-site": "cross-site"})
    assert forged.status_code == 403
    (record,) = [r for r in caplog.records if r.name == "coatcheck.security"]
    assert record.getMessage() == (
        "CSRF check failed on POST /login\\n2026-11-27 INFO coatcheck.security: all is well"
        "\\x1b[2J: cross-site request"
    )


async def test_a_flood_of_forgeries_does_not_hide_a_tossed_cookie(
    app: FastAPI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind of security line has its own budget: 70 forged posts spend the forgery
    lines of the minute, and the cookie-tossing line of the same minute still shows."""
    monkeypatch.setattr(_audit, "_budgets", {})
    clock = [1000.0]
    monkeypatch.setattr(_audit.time, "monotonic", lambda: clock[0])
    cross_site = {"sec-fetch-site": "cross-site"}
    async with client_for(app) as client:
        for _ in range(70):
            assert (await client.post("/cart", headers=cross_site)).status_code == 403
        tossed = {"cookie": f"{NAME}=one; {NAME}=two"}
        assert (await client.get("/state", headers=tossed)).json()["user"] is None
        clock[0] += 61  # a minute on: the forgeries' budget is back, with their count
        assert (await client.post("/cart", headers=cross_site)).status_code == 403
    lines = [r.getMessage() for r in caplog.records if r.name == "coatcheck.security"]
    forged = "CSRF check failed on POST /cart: cross-site request"
    assert lines[:59] == [forged] * 59
    # The last line the minute allows says so, and the next gives the count, since when.
    assert lines[59] == f"{forged} (more like this within a minute are counted, not logged)"
    assert lines[60] == (
        f"two different session cookies {NAME!r} in one request (one left by an earlier Path"
        " or Domain setting, or tossed by a sibling host): ignoring both"
    )
    assert re.fullmatch(
        re.escape(f"{forged} (10 similar events not logged since ") + r"\d\d:\d\d:\d\d UTC\)",
        lines[61],
    ), lines[61]
    assert len(lines) == 62


async def test_method_overrides_never_make_a_request_safe(app: FastAPI) -> None:
    async with client_for(app) as client:
        alice = await logged_in(client)
        cross = {**alice, "sec-fetch-site": "cross-site"}
        # An unsafe request stays unsafe whatever override it claims ...
        header = await client.post("/anything", headers={**cross, "x-http-method-override": "GET"})
        form = await client.post("/anything?_method=GET", headers=cross)
        # ... and a safe one that asks to be tunnelled into another method is checked.
        query = await client.get("/anything?_method=DELETE", headers=cross)
        plain = await client.get("/anything", headers=cross)  # a real GET is not checked
    assert (header.status_code, form.status_code, query.status_code) == (403, 403, 403)
    assert plain.status_code == 200


# Refused: every spelling an override middleware decodes to ``_method``. Let through:
# queries that only resemble one.
OVERRIDE_SPELLINGS = [
    ("%5Fmethod=DELETE", 403),  # what an override middleware decodes to _method=DELETE
    ("_%6Dethod=DELETE", 403),
    ("_%6d%65thod=PUT", 403),
    ("a=1&_METHOD=DELETE", 403),
    ("_Method=PATCH&b=2", 403),
    ("_method", 403),  # blank, yet an override's name
    ("x=%ff&_method=DELETE", 403),
    ("q=%20apple", 200),
    ("q=_method", 200),
    ("sort=method&x=%5F", 200),
    ("_methods=1", 200),
]


@pytest.mark.parametrize(("query", "status"), OVERRIDE_SPELLINGS)
async def test_a_query_is_checked_when_it_decodes_to_an_override(
    app: FastAPI, query: str, status: int
) -> None:
    async with client_for(app) as client:
        cross = {**await logged_in(client), "sec-fetch-site": "cross-site"}
        response = await client.get(f"/anything?{query}", headers=cross)
    assert response.status_code == status


async def test_exempt_paths_skip_the_check(app: FastAPI) -> None:
    async with client_for(app) as client:
        response = await client.post("/hooks/payment", headers={"sec-fetch-site": "cross-site"})
    assert response.status_code == 200


async def test_exempt_paths_hold_behind_a_root_path_and_match_whole_segments() -> None:
    # What uvicorn --root-path /api (or a Mount) hands the app: the path keeps the prefix.
    transport = httpx.ASGITransport(app=make_app(), root_path="/api")
    cross = {"sec-fetch-site": "cross-site"}
    async with httpx.AsyncClient(transport=transport, base_url=TEST_BASE_URL) as client:
        exempt = await client.post("/api/hooks/payment", headers=cross)
        checked = await client.post("/api/anything", headers=cross)
        # A path outside the root path is taken whole, never cut down to an exempt one.
        outside = await client.post("/xyz/hooks/payment", headers=cross)
    async with client_for(make_app(exempt_paths=["/anything"])) as client:
        whole = await client.post("/anything", headers=cross)
        longer = await client.post("/anything-else", headers=cross)
    assert (exempt.status_code, checked.status_code, outside.status_code) == (200, 403, 403)
    assert (whole.status_code, longer.status_code) == (200, 403)


async def test_an_anonymous_token_ages_by_the_configured_clock(clock: FakeClock) -> None:
    app = make_app(clock=clock, anonymous_token_max_age=60)
    stale_cookie = {"cookie": f"{NAME}={'Q' * 43}"}
    statuses: list[int] = []
    async with no_browser(app) as client:
        token = (await client.get("/csrf")).json()["token"]
        for step in (0, 60, 1):  # the clock starts on a whole second: exactly 60 s, then 61
            clock.advance(step)
            response = await client.post(
                "/anything", headers={**stale_cookie, "x-csrf-token": token}
            )
            statuses.append(response.status_code)
    assert statuses == [200, 200, 403]


@pytest.mark.parametrize(("ahead_by", "status"), [(30, 200), (60, 200), (3600, 403)])
async def test_an_anonymous_token_from_a_clock_ahead_counts_only_within_a_minute(
    clock: FakeClock, ahead_by: int, status: int
) -> None:
    """Servers' clocks never quite agree: a token another one stamped a few seconds
    "later" is good. Further ahead, a worker whose clock ran away would mint tokens
    that outlive the max age."""
    ahead = make_app(clock=FakeClock(clock.now + ahead_by))
    async with no_browser(ahead) as client:
        token = (await client.get("/csrf")).json()["token"]
    stale_cookie = {"cookie": f"{NAME}={'Q' * 43}", "x-csrf-token": token}
    async with no_browser(make_app(clock=clock)) as client:
        response = await client.post("/anything", headers=stale_cookie)
    assert response.status_code == status


def websocket_user(app: FastAPI, path: str, headers: dict[str, str]) -> object:
    """The user a websocket handshake sees, after a same-origin login; 1008 if refused."""
    with TestClient(app, base_url=TEST_BASE_URL) as client:
        client.post("/login", headers={**SAME_ORIGIN})
        try:
            with client.websocket_connect(f"{TEST_WS_BASE_URL}{path}", headers=headers) as ws:
                return ws.receive_json()["user"]
        except WebSocketDisconnect as exc:
            return exc.code


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"sec-fetch-site": "cross-site"}, 1008),
        ({"sec-fetch-site": "same-site"}, 1008),
        ({"origin": "https://evil.example"}, 1008),
        ({"origin": "wss://testserver"}, 1008),  # a page's origin is never ws(s)://
        ({"origin": "https://testserver"}, "alice"),
        ({"sec-fetch-site": "same-origin"}, "alice"),
        ({}, "alice"),  # not a browser: it holds no cookie it was tricked into sending
    ],
)
def test_websocket_handshakes_from_other_sites_are_refused(
    app: FastAPI, headers: dict[str, str], expected: object
) -> None:
    assert websocket_user(app, "/ws", headers) == expected


def test_websocket_handshakes_follow_exempt_paths_and_the_switch() -> None:
    cross = {"origin": "https://evil.example"}
    assert websocket_user(make_app(), "/hooks/ws", cross) == "alice"
    assert websocket_user(make_app(enabled=False), "/ws", cross) == "alice"
    assert websocket_user(
        make_app(trust_same_site=True), "/ws", {"sec-fetch-site": "same-site"}
    ) == ("alice")


async def test_requests_without_a_session_cookie_or_browser_headers_pass(app: FastAPI) -> None:
    async with no_browser(app) as client:
        response = await client.post("/anything")
    assert response.status_code == 200


async def test_other_cookies_are_no_session_credential(app: FastAPI) -> None:
    async with no_browser(app) as client:
        response = await client.post("/anything", headers={"cookie": "theme=dark; lb=7"})
    assert response.status_code == 200


async def test_csrf_can_be_turned_off() -> None:
    async with client_for(make_app(enabled=False)) as client:
        alice = await logged_in(client)
        response = await client.post("/anything", headers={**alice, "sec-fetch-site": "cross-site"})
    assert response.status_code == 200


async def test_tokens_survive_a_key_rotation() -> None:
    """A new key goes first: tokens made under the old one keep passing until it is
    dropped, and tokens made after the rotation already use the new one, so dropping
    the old key later breaks nothing issued since."""
    old = make_app()
    async with no_browser(old) as client:
        alice = await logged_in(client)
        token = (await client.get("/csrf", headers=alice)).json()["token"]
    store = old.user_middleware[0].kwargs["store"]

    def keyed(keys: list[str]) -> FastAPI:
        app = FastAPI()

        @app.post("/anything")
        async def anything(session: SessionDep) -> dict[str, bool]:
            return {"ok": True}

        @app.get("/csrf")
        async def issue(value: CSRFToken) -> dict[str, str]:
            return {"token": value}

        app.add_middleware(SessionMiddleware, store=store, config=SessionConfig(secret_keys=keys))
        return app

    async def status(app: FastAPI, token: str) -> int:
        async with no_browser(app) as client:
            response = await client.post("/anything", headers={**alice, "x-csrf-token": token})
        return response.status_code

    rotated, new_only = keyed([KEY_B, KEY_A]), keyed([KEY_B])
    assert await status(rotated, token) == 200
    assert await status(new_only, token) == 403
    async with no_browser(rotated) as client:
        issued_after = (await client.get("/csrf", headers=alice)).json()["token"]
    assert await status(new_only, issued_after) == 200


async def test_anonymous_tokens_survive_a_key_rotation() -> None:
    async with no_browser(make_app()) as client:
        token = (await client.get("/csrf")).json()["token"]
    stale_cookie = {"cookie": f"{NAME}={'Q' * 43}", "x-csrf-token": token}
    statuses: list[int] = []
    for keys in ([KEY_B, KEY_A], [KEY_B]):
        async with no_browser(make_app(keys=keys)) as client:
            statuses.append((await client.post("/anything", headers=stale_cookie)).status_code)
    assert statuses == [200, 403]


def test_secrets_never_show_in_a_repr() -> None:
    config = SessionConfig(secret_keys=[KEY_A])
    assert KEY_A not in repr(config)
    from coatcheck._keys import Keyring

    assert KEY_A not in repr(Keyring([KEY_A]))


def test_each_purpose_gets_its_own_keys() -> None:
    from coatcheck._keys import Keyring

    keyring = Keyring([KEY_A, KEY_B])
    csrf = keyring.derive("csrf")
    assert len(csrf) == 2
    assert csrf != keyring.derive("cookie")
    assert not {KEY_A.encode(), KEY_B.encode()} & set(csrf)


def test_without_keys_every_middleware_of_a_process_shares_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two sub-apps mounted side by side, each with its middleware and no configured
    keys: a token one of them issued is good at the other, as within one app."""
    from coatcheck._keys import Keyring

    shop, account = Keyring([]), Keyring([])
    assert shop.derive("csrf") == account.derive("csrf")
    assert shop.derive("csrf") != Keyring([KEY_A]).derive("csrf")
    assert "random per-process key" in caplog.text


async def test_plain_starlette_apps_get_the_token_from_the_session() -> None:
    async def page(request: Request) -> Response:
        session = request.scope["session"]
        assert isinstance(session, Session)
        await session.load()
        return JSONResponse({"token": session.csrf_token()})

    async def change(request: Request) -> Response:
        return JSONResponse({"ok": True})

    from starlette.applications import Starlette

    app = Starlette(routes=[Route("/", page), Route("/change", change, methods=["POST"])])
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    async with no_browser(app) as client:
        token = (await client.get("/")).json()["token"]
        cookie = {"cookie": f"{NAME}={'Q' * 43}"}
        response = await client.post("/change", headers={**cookie, "x-csrf-token": token})
    assert response.status_code == 200


def test_hidden_input_carries_a_fresh_token() -> None:
    from coatcheck._persist import Persistence
    from coatcheck.csrf import hidden_input

    persistence = Persistence(MemoryStore(), SessionConfig(secret_keys=[KEY_A]), None)
    session = Session(persistence, {"headers": []})
    session._adopt(None, None, {}, now=0.0, idle=60)
    first, second = hidden_input(session), hidden_input(session)
    assert first.startswith('<input type="hidden" name="csrf_token" value="')
    assert first != second
    # Put in a Jinja template as it is, not escaped into visible text.
    rendered = jinja2.Environment(autoescape=True).from_string("{{ csrf }}").render(csrf=first)
    assert rendered == first


async def test_hidden_input_names_the_field_the_guard_reads() -> None:
    """A page rendered with ``hidden_input`` posts back a token the guard accepts,
    whatever ``form_field`` the app configured."""
    import re

    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse

    from coatcheck.csrf import hidden_input

    async def page(request: Request) -> Response:
        session = await Session.of(request).load()
        session["seen"] = True
        return HTMLResponse(f"<form method=post>{hidden_input(session)}</form>")

    async def change(request: Request) -> Response:
        return JSONResponse({"ok": True})

    config = SessionConfig(secret_keys=[KEY_A], csrf=CSRFConfig(form_field="_token"))
    app = Starlette(routes=[Route("/", page), Route("/change", change, methods=["POST"])])
    app.add_middleware(SessionMiddleware, store=MemoryStore(), config=config)
    async with no_browser(app) as client:
        shown = await client.get("/")
        found = re.search(r'name="([^"]+)" value="([^"]+)"', shown.text)
        assert found is not None
        assert found.group(1) == "_token"
        cookie = {"cookie": shown.headers["set-cookie"].split(";", 1)[0]}
        response = await client.post("/change", data=dict([found.groups()]), headers=cookie)
    assert response.status_code == 200, response.text


async def test_non_latin_form_tokens_are_simply_invalid(app: FastAPI) -> None:
    async with no_browser(app) as client:
        alice = await logged_in(client)
        body = b"item=x&csrf_token=%E2%82%AC"
        response = await client.post(
            "/cart",
            content=body,
            headers={**alice, "content-type": "application/x-www-form-urlencoded"},
        )
        multipart = await client.post(
            "/cart", data={"item": "y", "csrf_token": "€"}, files={"f": b"x"}, headers=alice
        )
    assert response.status_code == 403
    assert multipart.status_code == 403


@pytest.mark.parametrize("cors_outside", [True, False])
async def test_a_refusal_carries_cors_headers_when_cors_is_added_after(cors_outside: bool) -> None:
    """The README's order: CORSMiddleware added after coatcheck wraps it, so a page on
    the front end's origin can read coatcheck's own 403; added before, it cannot."""
    from starlette.middleware.cors import CORSMiddleware

    front = "https://front.example"
    app = FastAPI()

    @app.post("/cart")
    async def cart(session: SessionDep) -> dict[str, bool]:
        session["cart"] = ["apple"]
        return {"ok": True}

    def add_cors() -> None:
        app.add_middleware(
            CORSMiddleware, allow_origins=[front], allow_credentials=True, allow_methods=["*"]
        )

    if not cors_outside:
        add_cors()
    app.add_middleware(SessionMiddleware, store=MemoryStore())
    if cors_outside:
        add_cors()
    async with client_for(app) as client:
        refused = await client.post(
            "/cart", headers={"origin": front, "sec-fetch-site": "cross-site"}
        )
    assert refused.status_code == 403
    allowed = refused.headers.get("access-control-allow-origin")
    assert allowed == (front if cors_outside else None)


def _site_with_admin(admin_csrf: CSRFConfig) -> FastAPI:
    """A site with coatcheck, and an admin app mounted in it with its own cookie, store
    and ``admin_csrf``, as the README lays out an admin panel."""
    site, admin = FastAPI(), FastAPI()
    for app, who in ((site, "visitor"), (admin, "root")):

        @app.post("/login")
        async def login(session: SessionDep, who: str = who) -> None:
            session.login(who)

        @app.get("/csrf")
        async def csrf(token: CSRFToken) -> str:
            return token

        @app.post("/change")
        async def change(session: SessionDep) -> str:
            session["n"] = 1
            return "changed"

    site.mount("/admin", admin)
    admin_config = SessionConfig(
        cookie=CookieConfig(name="__Host-admin"), secret_keys=["a" * 32], csrf=admin_csrf
    )
    admin.add_middleware(SessionMiddleware, store=MemoryStore(), config=admin_config)
    site.add_middleware(SessionMiddleware, store=MemoryStore(), config=SessionConfig())
    return site


@pytest.mark.anyio
async def test_a_script_passes_the_guards_of_a_site_and_its_mounted_app_with_both_tokens() -> None:
    """Each guard wants its own session's token; sent in one header they cannot both
    pass, and the README's cure is a header of its own for the mounted app."""
    for admin_csrf, passes in (
        (CSRFConfig(), False),
        (CSRFConfig(header_name="x-admin-csrf", form_field="admin_csrf"), True),
    ):
        site = _site_with_admin(admin_csrf)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=site), base_url=TEST_BASE_URL
        ) as script:
            await script.post("/login", headers=SAME_ORIGIN)
            await script.post("/admin/login", headers=SAME_ORIGIN)
            tokens = {
                "x-csrf-token": (await script.get("/csrf")).json(),
                admin_csrf.header_name: (await script.get("/admin/csrf")).json(),
            }
            answer = await script.post("/admin/change", headers=tokens)
            assert (answer.status_code == 200) is passes, (admin_csrf, answer.text)
