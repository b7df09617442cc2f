"""The reference app on PostgreSQL through a real uvicorn server: devices, the shell,
and a database that stops or hangs under a running app."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from ..postgres_server import PostgresServer
from ..store_kinds import unique_prefix
from .conftest import StartServer, run_cli
from .test_redis_demo import assert_outage_answered, assert_unavailable, client_for, login

pytestmark = pytest.mark.e2e


def demo_on(start_server: StartServer, store_url: str, *args: str) -> str:
    return start_server("--store", store_url, *args, name="pg-demo", pass_store=False).url


def alice_with_a_pear(client: httpx.Client) -> dict[str, str]:
    """Alice's cookie, once she has signed in and put a pear in her cart."""
    alice = login(client)
    assert client.post("/cart/items", json={"item": "pear"}, headers=alice).status_code == 201
    return alice


def cart_once_back(client: httpx.Client, cookie: dict[str, str]) -> object:
    """The cart, once the app reaches the database again by itself (no restart)."""
    for _ in range(100):
        response = client.get("/cart", headers=cookie)
        if response.status_code == 200:
            return response.json()
        assert_unavailable(response)
        time.sleep(0.1)
    raise AssertionError("the app did not recover within 10 s")


def test_devices_and_the_shell_on_postgres(
    start_server: StartServer, postgres: PostgresServer
) -> None:
    store_url = f"{postgres.url}?table={unique_prefix()}"
    url = demo_on(start_server, store_url)
    with client_for(url) as client:
        phone = login(client)
        laptop = login(client)
        assert client.post("/cart/items", json={"item": "plum"}, headers=laptop).status_code == 201
        sessions = client.get("/sessions", headers=laptop).json()["sessions"]
        assert len(sessions) == 2
        other = next(entry["id"] for entry in sessions if not entry["current"])
        assert client.delete(f"/sessions/{other}", headers=laptop).status_code == 204
        assert client.get("/me", headers=phone).status_code == 401

        listed = run_cli("sessions", "list", "--store", store_url, "--user", "alice")
        assert next(entry["id"] for entry in sessions if entry["current"]) in listed.stdout
        assert run_cli("sessions", "count", "--store", store_url).stdout.startswith("1 live")
        revoked = run_cli("sessions", "revoke", "--store", store_url, "--user", "alice")
        assert revoked.stdout == "Revoked 1 session of alice.\n"
        assert client.get("/me", headers=laptop).status_code == 401
        assert client.get("/cart", headers=laptop).json() == {"items": []}


def test_the_shell_never_creates_a_table_it_was_not_given(postgres: PostgresServer) -> None:
    table = unique_prefix()
    store_url = f"{postgres.url}?table={table}"
    result = run_cli("sessions", "count", "--store", store_url, fails=True)
    assert f"no session table '{table}'" in " ".join(result.stderr.split())
    with postgres.connect() as db:
        assert db.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


def test_a_stopped_database_gives_503_then_the_app_recovers_with_its_sessions(
    start_server: StartServer, own_postgres: PostgresServer
) -> None:
    url = demo_on(start_server, own_postgres.url)
    with client_for(url) as client:
        alice = alice_with_a_pear(client)
        own_postgres.stop()
        assert_outage_answered(client, alice, within=10)

        own_postgres.start()  # the sessions are on disk: alice is still signed in
        assert cart_once_back(client, alice) == {"items": ["pear"]}
        assert client.get("/me", headers=alice).json()["user"] == "alice"


def test_a_frozen_database_times_out_into_503_and_the_session_survives(
    start_server: StartServer, own_postgres: PostgresServer
) -> None:
    url = demo_on(start_server, own_postgres.url)
    with client_for(url) as client:
        alice = alice_with_a_pear(client)
        own_postgres.signal_all(signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert_unavailable(client.get("/cart", headers=alice))
            assert time.monotonic() - started < 5  # about the 2 s timeout
            assert client.get("/static/style.css").status_code == 200
        finally:
            own_postgres.signal_all(signal.SIGCONT)
        assert cart_once_back(client, alice) == {"items": ["pear"]}
