"""CSRF through the reference app on a real uvicorn server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
import pytest

from .conftest import StartServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def url(start_module_server: StartServer) -> str:
    return start_module_server(name="csrf").url


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    """No browser headers of its own: each test says where its requests come from."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    with httpx.Client(base_url=url, timeout=10, cookies=jar) as client:
        yield client


SAME_ORIGIN = {"sec-fetch-site": "same-origin"}
CROSS_SITE = {"sec-fetch-site": "cross-site"}


def login(client: httpx.Client) -> dict[str, str]:
    response = client.post(
        "/login", json={"username": "alice", "password": "wonderland"}, headers={**SAME_ORIGIN}
    )
    assert response.status_code == 200
    return {"cookie": response.headers["set-cookie"].split(";", 1)[0]}


def cart(client: httpx.Client, alice: dict[str, str]) -> list[str]:
    items: list[str] = client.get("/cart", headers=alice).json()["items"]
    return items


def test_cross_site_posts_and_deletes_change_nothing(client: httpx.Client) -> None:
    alice = login(client)
    added = client.post("/cart/items", json={"item": "mine"}, headers={**alice, **SAME_ORIGIN})
    assert added.status_code == 201
    device = client.get("/sessions", headers=alice).json()["sessions"][0]["id"]
    forged = [
        client.post("/cart/items", data={"item": "evil"}, headers={**alice, **CROSS_SITE}),
        client.post("/logout", headers={**alice, **CROSS_SITE}),
        client.post("/sessions/revoke-others", headers={**alice, **CROSS_SITE}),
        client.delete(f"/sessions/{device}", headers={**alice, **CROSS_SITE}),
    ]
    for response in forged:
        assert response.status_code == 403
        assert response.json()["detail"].startswith("CSRF check failed")
        assert "set-cookie" not in response.headers
    assert cart(client, alice) == ["mine"]
    assert client.get("/me", headers=alice).json()["user"] == "alice"


@pytest.mark.parametrize(
    "origin", ["null", "http://127.0.0.1.evil.example", "https://evil.example", "http://localhost"]
)
def test_foreign_and_null_origins_are_refused(client: httpx.Client, url: str, origin: str) -> None:
    alice = login(client)
    response = client.post("/cart/items", json={"item": "x"}, headers={**alice, "origin": origin})
    assert response.status_code == 403
    own = client.post("/cart/items", json={"item": "y"}, headers={**alice, "origin": url})
    assert own.status_code == 201
    assert cart(client, alice) == ["y"]


def test_a_client_without_browser_headers_uses_the_pages_token(client: httpx.Client) -> None:
    alice = login(client)
    refused = client.post("/cart/items", data={"item": "no token"}, headers=alice)
    assert refused.status_code == 403
    page = client.get("/", headers=alice).text
    tokens = re.findall(r'name="csrf_token" value="([A-Za-z0-9_-]{86})"', page)
    assert tokens
    assert len(set(tokens)) == 1  # one masked token per page
    form = client.post("/cart/items", data={"item": "plum", "csrf_token": tokens[0]}, headers=alice)
    assert form.status_code == 303
    header = client.post(
        "/cart/items", json={"item": "fig"}, headers={**alice, "x-csrf-token": tokens[0]}
    )
    assert header.status_code == 201
    assert cart(client, alice) == ["plum", "fig"]


def test_login_csrf_is_refused(client: httpx.Client) -> None:
    forged = client.post(
        "/login", data={"username": "alice", "password": "wonderland"}, headers=CROSS_SITE
    )
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers


def test_json_endpoints_refuse_text_plain(client: httpx.Client) -> None:
    alice = login(client)
    response = client.post(
        "/cart/items",
        content=b'{"item": "sneaky"}',
        headers={**alice, **SAME_ORIGIN, "content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert cart(client, alice) == []


def test_a_token_from_one_worker_passes_on_every_worker(start_server: StartServer) -> None:
    """Workers share one CSRF key, so a page's token is good on any connection."""
    server = start_server("--workers", "2", name="csrf-workers")
    workers = server.started_workers(2)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        alice = login(client)
    statuses: list[tuple[int, int]] = []
    for issuer, checker in [workers, workers[::-1]]:
        with server.served_by(issuer), httpx.Client(base_url=server.url, timeout=10) as page:
            html = page.get("/", headers=alice).text
        token = re.findall(r'name="csrf_token" value="([A-Za-z0-9_-]{86})"', html)[0]
        # No Fetch Metadata or Origin: only the token vouches.
        with server.served_by(checker), httpx.Client(base_url=server.url, timeout=10) as post:
            response = post.post(
                "/cart/items",
                json={"item": f"from-{issuer}"},
                headers={**alice, "x-csrf-token": token},
            )
        statuses.append((issuer, response.status_code))
    assert statuses == [(workers[0], 201), (workers[1], 201)], server.log()
