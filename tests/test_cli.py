"""The ``coatcheck`` command, run in-process against a real SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from rich.cells import cell_len
from typer.testing import CliRunner

from coatcheck import MemoryStore, SessionRecord, SQLiteStore, store_from_url
from coatcheck.cli import app
from coatcheck.demo.app import create_app, create_app_from_env
from coatcheck.store_contract import make_record

from .e2e.conftest import free_port
from .redis_servers import RedisServer

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Safari/604.1"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
DEMO_ENV = ("COATCHECK_DEMO_STORE", "COATCHECK_DEMO_SECURE", "COATCHECK_DEMO_IDLE")
DEMO_ENV += ("COATCHECK_DEMO_ABSOLUTE", "COATCHECK_DEMO_SECRET", "COATCHECK_STORE")


@dataclass
class Filled:
    """A store holding three live sessions and one expired record."""

    url: str
    path: Path
    public_ids: dict[str, list[str]] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # session IDs and their store keys


async def _fill(url: str, filled: Filled) -> None:
    demo = create_app(store_url=url)
    for user, agent in (("alice", FIREFOX), ("alice", PHONE), ("bob", "curl/8.5.0")):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=demo),
            base_url="http://demo.test",
            headers={"user-agent": agent, "sec-fetch-site": "same-origin"},
        ) as client:
            # alice's phone is a shared computer: a login with an idle limit of its own.
            shared = agent == PHONE
            response = await client.post(
                "/login", json={"username": user, "password": PASSWORDS[user], "shared": shared}
            )
            assert response.status_code == 200
            session_id = client.cookies["session"]
            me = (await client.get("/me")).json()
        filled.public_ids.setdefault(user, []).append(me["session"]["id"])
        filled.secrets += [session_id, hashlib.sha256(session_id.encode()).hexdigest()]
    store = demo.state.store
    past = time.time() - 3600
    await store.save(
        SessionRecord(
            key="f" * 64,
            public_id="expiredpublicid0",
            data=b"{}",
            user_id="alice",
            created_at=past - 60,
            last_seen_at=past - 60,
            expires_at=past,
        )
    )
    await store.aclose()


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    path = tmp_path / "sessions.db"
    result = Filled(url=f"sqlite:///{path}", path=path)
    asyncio.run(_fill(result.url, result))
    return result


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    for name in DEMO_ENV:  # restored after the test, whatever the command sets
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the demo's default store file lands here
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"})


def _assert_no_secrets(output: str, filled: Filled) -> None:
    for secret in filled.secrets:
        assert secret not in output
    assert "f" * 64 not in output


# -- sessions ---------------------------------------------------------------------------


def test_count_ignores_expired_sessions(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "3 live sessions"


def test_a_store_served_by_an_installed_package_is_reached_by_its_url(
    runner: CliRunner, store_plugin: None
) -> None:
    result = runner.invoke(app, ["sessions", "count", "--store", "example://shop"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "0 live sessions"


def test_store_can_come_from_the_environment(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "count"], env={"COATCHECK_STORE": filled.url})
    assert result.exit_code == 0, result.output
    assert "3 live sessions" in result.stdout


def test_purge_removes_only_expired_records(runner: CliRunner, filled: Filled) -> None:
    first = runner.invoke(app, ["sessions", "purge", "--store", filled.url])
    second = runner.invoke(app, ["sessions", "purge", "--store", filled.url])
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "Purged 1 expired session."
    assert second.stdout.strip() == "Purged 0 expired sessions."
    assert count.stdout.strip() == "3 live sessions"


def test_list_shows_public_ids_and_never_secrets(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "list", "--store", filled.url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    output = result.stdout
    assert "Live sessions of alice" in output
    for heading in ("Public ID", "Created", "Last seen", "Expires", "User agent"):
        assert heading in output
    for public_id in filled.public_ids["alice"]:
        assert public_id in output
    assert filled.public_ids["bob"][0] not in output
    assert "expiredpublicid0" not in output
    assert "Firefox/128.0" in output
    assert "iPhone" in output
    assert time.strftime("%Y-%m-%d", time.gmtime()) in output
    assert "127.0.0.1" in output  # the demo keeps where each session was used
    _assert_no_secrets(output, filled)
    # Piped, as here: one row per line, without padding for scripts to strip.
    assert all(line == line.rstrip() for line in output.splitlines())


def test_list_as_json_for_scripts(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(
        app, ["sessions", "list", "--store", filled.url, "--user", "alice", "--json"]
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [entry["id"] for entry in listed] == filled.public_ids["alice"]
    assert [entry["user_agent"] for entry in listed] == [FIREFOX, PHONE]
    assert {entry["ip_address"] for entry in listed} == {"127.0.0.1"}
    assert {entry["user"] for entry in listed} == {"alice"}
    for entry in listed:
        created = datetime.fromisoformat(entry["created_at"])
        assert created.utcoffset() == timedelta(0)
        assert created < datetime.fromisoformat(entry["expires_at"])
        assert entry["remember"] is False
        assert entry["absolute_timeout"] is None
    assert [entry["idle_timeout"] for entry in listed] == [None, 300]
    _assert_no_secrets(result.stdout, filled)
    nobody = ["sessions", "list", "--store", filled.url, "--user", "carol", "--json"]
    assert json.loads(runner.invoke(app, nobody).stdout) == []


def _live(*, created_offset: float = 0.0, **fields: Any) -> SessionRecord:
    """A live session of alice's, made now (plus ``created_offset``), for ten minutes."""
    now = time.time()
    defaults: dict[str, Any] = {
        "data": b"{}",
        "user_id": "alice",
        "created_at": now + created_offset,
        "last_seen_at": now,
        "expires_at": now + 600,
        "user_agent": "Firefox",
    }
    return SessionRecord(**{**defaults, **fields})


def _stored(path: Path, *records: SessionRecord) -> str:
    """The URL of a new SQLite store at ``path`` that holds ``records``."""
    url = f"sqlite:///{path}"

    async def fill() -> None:
        store = store_from_url(url)
        for record in records:
            await store.save(record)
        await store.aclose()

    asyncio.run(fill())
    return url


def test_list_shows_addresses_once_sessions_keep_them(runner: CliRunner, tmp_path: Path) -> None:
    url = _stored(
        tmp_path / "addresses.db",
        _live(key="0" * 64, public_id="addresspublicid0", ip_address="2001:db8::42"),
        _live(key="1" * 64, public_id="addresspublicid1", created_offset=1),
    )
    result = runner.invoke(app, ["sessions", "list", "--store", url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    assert "Address" in result.stdout
    first, second = (line for line in result.stdout.splitlines() if "addresspublicid" in line)
    assert "2001:db8::42" in first
    assert " - " in second  # kept by no setting: shown as unknown


def test_list_never_cuts_an_address(runner: CliRunner, tmp_path: Path) -> None:
    address = "2001:db8:85a3::8a2e:370:7334"
    agent = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 " * 3
    url = _stored(
        tmp_path / "addresses.db",
        _live(key="0" * 64, public_id="addresspublicid0", ip_address=address, user_agent=agent),
    )
    for columns in ("200", "100"):
        result = runner.invoke(
            app, ["sessions", "list", "--store", url, "--user", "alice"], env={"COLUMNS": columns}
        )
        assert result.exit_code == 0, result.output
        assert address in result.stdout


def test_list_stacks_each_device_on_a_terminal_too_narrow_for_the_table(
    runner: CliRunner, tmp_path: Path
) -> None:
    """An 80-column terminal cannot hold the table once addresses are kept: each device
    becomes a block of lines, none wider than the terminal, rather than wrapped rows."""
    agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120"
    url = _stored(
        tmp_path / "narrow.db",
        _live(key="0" * 64, public_id="narrowpublicid00", ip_address="203.0.113.7"),
        _live(key="1" * 64, public_id="narrowpublicid01", user_agent=agent, created_offset=1),
    )
    for columns in ("80", "40"):
        # A terminal (a pipe gets at least 160 columns), without colours (NO_COLOR).
        terminal = {"COLUMNS": columns, "FORCE_COLOR": "1"}
        result = runner.invoke(
            app, ["sessions", "list", "--store", url, "--user", "alice"], env=terminal
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(cell_len(line) for line in lines) <= int(columns)
        assert [line.strip() for line in lines if "narrowpublicid" in line] == [
            "narrowpublicid00",
            "narrowpublicid01",
        ]
        assert "   Address     203.0.113.7" in lines
        (shown,) = [line for line in lines if line.startswith("   User agent  Mozilla/5.0")]
        assert shown.endswith("…")
        assert agent.startswith(shown.removeprefix("   User agent  ")[:-1])
    wide = runner.invoke(app, ["sessions", "list", "--store", url, "--user", "alice"])
    assert "Public ID" in wide.stdout  # 200 columns: still the table


def test_stacked_devices_are_set_apart_by_a_blank_line(runner: CliRunner, tmp_path: Path) -> None:
    url = _stored(
        tmp_path / "narrow.db",
        _live(key="0" * 64, public_id="narrowpublicid00", ip_address="203.0.113.7"),
        _live(
            key="1" * 64, public_id="narrowpublicid01", ip_address="203.0.113.8", created_offset=1
        ),
    )
    terminal = {"COLUMNS": "40", "FORCE_COLOR": "1"}
    result = runner.invoke(
        app, ["sessions", "list", "--store", url, "--user", "alice"], env=terminal
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    second = lines.index(" narrowpublicid01")
    assert lines[second - 1] == ""
    assert lines.count("") == 2  # and the title from the first


def test_list_draws_every_device_of_a_user_with_thousands_one_line_each(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A bot that logged in 10,000 times took Rich's table 19 s to draw; each row is
    still one line within the width, a long or wide user agent cut with an ellipsis."""
    agent = "Mozilla/5.0 (Linux; Android 14) 浏览器 " * 8
    records = [
        _live(key=f"{n:064x}", public_id=f"manypublicid{n:04d}", user_agent=agent, created_offset=n)
        for n in range(2000)
    ]
    url = _stored(tmp_path / "many.db", *records)
    result = runner.invoke(app, ["sessions", "list", "--store", url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "manypublicid" in line]
    assert [row.split()[0] for row in rows] == [f"manypublicid{n:04d}" for n in range(2000)]
    assert all(row.endswith("…") and 190 < cell_len(row) <= 200 for row in rows)
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= 200  # COLUMNS


def test_list_prints_markup_in_user_agents_and_names_as_text(
    runner: CliRunner, tmp_path: Path
) -> None:
    """User agents come from clients: one holding Rich markup must neither break the
    listing nor restyle it."""
    user, agent = "[/]al[bold]ice", "evil [/] [bold]x[red]"
    url = _stored(
        tmp_path / "marked.db",
        _live(key="a" * 64, public_id="markuppublicid00", user_id=user, user_agent=agent),
    )
    result = runner.invoke(app, ["sessions", "list", "--store", url, "--user", user])
    assert result.exit_code == 0, result.output
    assert agent in result.stdout
    assert f"Live sessions of {user}" in result.stdout
    assert "Address" not in result.stdout  # no session kept one: no empty column
    revoked = runner.invoke(app, ["sessions", "revoke", "--store", url, "--user", user])
    assert revoked.exit_code == 0, revoked.output
    assert f"of {user}." in revoked.stdout


@pytest.mark.parametrize("command", ["list", "revoke"])
def test_a_user_argument_that_is_not_utf8_is_a_clear_error(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    """argv hands such bytes over as a lone surrogate, which no store can look up."""
    url = _stored(tmp_path / "odd.db", _live(key="b" * 64, public_id="oddpublicid00000"))
    result = runner.invoke(app, ["sessions", command, "--store", url, "--user", "\udcff"])
    assert result.exit_code == 2
    assert "not valid UTF-8" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_list_shows_control_characters_from_clients_as_escapes(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A user agent is the client's to choose: escape sequences in it must not reach the
    operator's terminal (retitling it, hiding lines), and a newline must not add a row."""
    agent = "\x1b]0;pwned\x07\x1b[2J\x1b[31mFirefox\nfake row\u2028\x7f"
    url = _stored(
        tmp_path / "escapes.db",
        _live(
            key="e" * 64, public_id="escapepublicid00", user_agent=agent, ip_address="192.0.2.1\r"
        ),
    )
    result = runner.invoke(app, ["sessions", "list", "--store", url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    for control in ("\x1b", "\x07", "\r", "\u2028", "\x7f"):
        assert control not in result.stdout
    [row] = [line for line in result.stdout.splitlines() if "escapepublicid00" in line]
    assert "192.0.2.1\\r" in row
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mFirefox\\nfake row\\u2028\\x7f" in row


def test_list_for_a_user_without_sessions(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "list", "--store", filled.url, "--user", "carol"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "No live sessions for carol."


def test_revoke_one_session_by_public_id(runner: CliRunner, filled: Filled) -> None:
    laptop, phone = filled.public_ids["alice"]
    args = ["sessions", "revoke", "--store", filled.url, "--user", "alice", "--id", phone]
    result = runner.invoke(app, args)
    listing = runner.invoke(app, ["sessions", "list", "--store", filled.url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Revoked 1 session of alice."
    assert phone not in listing.stdout
    assert laptop in listing.stdout
    _assert_no_secrets(result.output + listing.output, filled)


def test_revoking_someone_elses_session_fails_cleanly(runner: CliRunner, filled: Filled) -> None:
    bobs = filled.public_ids["bob"][0]
    args = ["sessions", "revoke", "--store", filled.url, "--user", "alice", "--id", bobs]
    result = runner.invoke(app, args)
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert result.exit_code == 1
    assert "Error:" in result.stderr
    assert "no live session" in result.stderr
    assert "Traceback" not in result.output
    assert count.stdout.strip() == "3 live sessions"


def test_a_session_id_given_for_a_public_id_is_never_shown_back(
    runner: CliRunner, filled: Filled
) -> None:
    """An operator may paste a cookie's value: quoted in the error, it would land in
    scrollback and logs."""
    session_id = filled.secrets[0]
    args = ["sessions", "revoke", "--store", filled.url, "--user", "alice", "--id", session_id]
    result = runner.invoke(app, args)
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert result.exit_code == 2
    assert "not a public id" in result.output
    _assert_no_secrets(result.output, filled)
    assert count.stdout.strip() == "3 live sessions"


def test_an_empty_user_is_a_usage_error(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "revoke", "--store", filled.url, "--user", ""])
    assert result.exit_code == 2
    assert "no login has an empty user id" in result.output


def test_text_the_terminal_cannot_show_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    zoe = _live(key="2" * 64, public_id="zoepublicid00000", user_id="Zoë", user_agent="Café ☕")
    url = _stored(tmp_path / "s.db", zoe)
    for command in (["list", "--user", "Zoë"], ["list", "--user", "Zoë-nobody"]):
        result = subprocess.run(
            [sys.executable, "-m", "coatcheck", "sessions", *command, "--store", url],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PYTHONIOENCODING": "ascii", "NO_COLOR": "1"},
        )
        assert result.returncode == 0, result.stderr
        assert "Zo?" in result.stdout
        assert "Traceback" not in result.stderr


def test_revoke_all_fails_on_an_unreachable_store_before_asking(runner: CliRunner) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0?timeout=0.5"
    result = runner.invoke(app, ["sessions", "revoke-all", "--store", url], input="y\n")
    assert result.exit_code == 1
    assert "unavailable" in result.stderr
    assert "End every session" not in result.output
    assert "s3cret" not in result.output


def test_revoke_all_of_a_users_sessions(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "revoke", "--store", filled.url, "--user", "alice"])
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    bob = runner.invoke(app, ["sessions", "list", "--store", filled.url, "--user", "bob"])
    assert result.exit_code == 0, result.output
    # Only the two live sessions count; the expired record goes with them all the same.
    assert result.stdout.strip() == "Revoked 2 sessions of alice."
    assert count.stdout.strip() == "1 live session"
    purge = runner.invoke(app, ["sessions", "purge", "--store", filled.url])
    assert purge.stdout.strip() == "Purged 0 expired sessions."
    assert filled.public_ids["bob"][0] in bob.stdout


def test_revoke_all_logs_everyone_out(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "revoke-all", "--store", filled.url, "--yes"])
    assert result.exit_code == 0, result.output
    # Three live sessions of two users; the expired record goes without being counted.
    assert result.stdout.strip() == "Revoked 3 live sessions; everyone must sign in again."
    _assert_no_secrets(result.output, filled)
    for user in ("alice", "bob"):
        listed = runner.invoke(app, ["sessions", "list", "--store", filled.url, "--user", user])
        assert listed.stdout.strip() == f"No live sessions for {user}."
    with contextlib.closing(sqlite3.connect(filled.path)) as db:
        assert db.execute("SELECT count(*) FROM coatcheck_sessions").fetchone() == (0,)


@pytest.mark.parametrize(("answer", "left"), [("n\n", 3), ("\n", 3), ("y\n", 0)])
def test_revoke_all_asks_first(runner: CliRunner, filled: Filled, answer: str, left: int) -> None:
    result = runner.invoke(app, ["sessions", "revoke-all", "--store", filled.url], input=answer)
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert f"End every session in {filled.url}? [y/N]" in result.output
    assert result.exit_code == (0 if left == 0 else 3)  # 1 is for a store that failed
    assert ("Revoked" in result.output) == (left == 0)
    assert ("Declined: nothing changed." in result.output) == (left != 0)
    assert count.stdout.strip() == f"{left} live session{'' if left == 1 else 's'}"


def test_revoke_all_without_an_answer_changes_nothing_and_exits_3(
    runner: CliRunner, filled: Filled
) -> None:
    """No terminal (cron, CI): the question meets the end of its input. That exited 1,
    which says the store failed."""
    result = runner.invoke(app, ["sessions", "revoke-all", "--store", filled.url], input="")
    count = runner.invoke(app, ["sessions", "count", "--store", filled.url])
    assert result.exit_code == 3
    assert "No answer: nothing changed. Without a terminal, pass --yes." in result.output
    assert count.stdout.strip() == "3 live sessions"


def test_revoke_all_asks_without_showing_the_password(runner: CliRunner, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth").start()
    try:
        with server.client() as admin:
            admin.config_set("requirepass", "hunter2")
        store = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        result = runner.invoke(app, ["sessions", "revoke-all", "--store", store], input="n\n")
    finally:
        server.stop()
    assert result.exit_code == 3
    assert "End every session in redis://:***@127.0.0.1:" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    "url",
    ["mongodb://localhost", "sqlite://", "sqlite:///x.db?colour=blue", "memory://?max_entries=x"],
)
def test_bad_store_urls_are_usage_errors(runner: CliRunner, url: str) -> None:
    result = runner.invoke(app, ["sessions", "count", "--store", url])
    assert result.exit_code == 2
    assert "--store" in result.output
    assert "Traceback" not in result.output


def test_a_missing_sqlite_file_is_not_created(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = runner.invoke(app, ["sessions", "count", "--store", f"sqlite:///{missing}"])
    assert result.exit_code == 2
    assert "no SQLite file" in result.output
    assert not missing.exists()


def test_a_file_that_is_not_a_database_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    result = runner.invoke(app, ["sessions", "count", "--store", f"sqlite:///{junk}"])
    assert result.exit_code == 1
    assert "Error:" in result.stderr
    assert "Traceback" not in result.output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _other_app(tmp_path: Path, *statements: str) -> Path:
    """Another app's SQLite database, alone in a folder of its own."""
    folder = tmp_path / "other-app"
    folder.mkdir()
    other = folder / "app.db"
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        for statement in statements:
            db.execute(statement)
    return other


@pytest.mark.parametrize("command", [["count"], ["purge"], ["list", "--user", "alice"]])
def test_another_apps_database_is_refused_and_left_alone(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    other = _other_app(tmp_path, "CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('a')")
    folder = other.parent
    before = _snapshot(folder)

    result = runner.invoke(app, ["sessions", *command, "--store", f"sqlite:///{other}"])
    revoke = ["sessions", "revoke", "--store", f"sqlite:///{other}", "--user", "alice"]
    revoked = runner.invoke(app, revoke)

    for outcome in (result, revoked):
        assert outcome.exit_code == 1
        assert "not a coatcheck session store" in outcome.stderr
        assert "Traceback" not in outcome.output
    assert _snapshot(folder) == before  # no WAL switch, no table, no side files
    with contextlib.closing(sqlite3.connect(other)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_another_apps_table_of_the_asked_name_is_refused_and_left_alone(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A ``sessions`` table of another framework must not gain coatcheck's columns."""
    other = _other_app(tmp_path, "CREATE TABLE sessions (session_key TEXT, expire_date TEXT)")
    folder = other.parent
    before = _snapshot(folder)
    result = runner.invoke(
        app, ["sessions", "count", "--store", f"sqlite:///{other}?table=sessions"]
    )
    assert result.exit_code == 1
    assert "is not a coatcheck session table" in result.stderr
    assert _snapshot(folder) == before


def test_a_store_with_another_table_name_is_found(runner: CliRunner, filled: Filled) -> None:
    result = runner.invoke(app, ["sessions", "count", "--store", f"{filled.url}?table=other"])
    assert result.exit_code == 1
    assert "not a coatcheck session store" in result.stderr
    assert "'other'" in result.stderr


@pytest.mark.parametrize(
    "command", [["count"], ["purge"], ["revoke", "--user", "alice"], ["revoke-all", "--yes"]]
)
def test_memory_stores_are_refused(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, ["sessions", *command, "--store", "memory://"])
    assert result.exit_code == 2
    assert "--store" in result.output
    assert "inside one process" in result.output
    assert "Revoked" not in result.output


@pytest.mark.parametrize(
    "command", [["count"], ["list", "--user", "alice"], ["revoke-all", "--yes"]]
)
def test_the_cookie_store_is_refused_for_it_keeps_nothing_here(
    runner: CliRunner, command: list[str]
) -> None:
    result = runner.invoke(app, ["sessions", *command, "--store", "cookie://"])
    assert result.exit_code == 2
    assert "in its browser's cookie" in result.output
    assert "Revoked" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:{port}/0",
        "redis://admin:hunter2@127.0.0.1:{port}/0?colour=blue",
        "mongodb://admin:hunter2@127.0.0.1:{port}/sessions",
        "postgresql://admin:hunter2%zz@127.0.0.1:{port}/sessions",
    ],
)
def test_store_errors_never_show_the_password(runner: CliRunner, url: str) -> None:
    store = url.format(port=free_port())  # nothing listens there
    for command in (["count"], ["list", "--user", "alice"]):
        result = runner.invoke(app, ["sessions", *command, "--store", store])
        assert result.exit_code in (1, 2)
        assert "Traceback" not in result.output
        assert "hunter2" not in result.output


def test_sessions_commands_need_a_store(runner: CliRunner) -> None:
    result = runner.invoke(app, ["sessions", "count"])
    assert result.exit_code == 2
    assert "--store" in result.output


@pytest.fixture
def connections(filled: Filled, monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every SQLite connection a store opens from here on (after ``filled`` is made)."""
    opened: list[sqlite3.Connection] = []
    connect = SQLiteStore._connect

    def recording(store: SQLiteStore) -> sqlite3.Connection:
        opened.append(connect(store))
        return opened[-1]

    monkeypatch.setattr(SQLiteStore, "_connect", recording)
    return opened


def _closed(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        (["count"], 0),
        (["purge"], 0),
        (["list", "--user", "alice"], 0),
        (["revoke", "--user", "bob"], 0),
        (["revoke", "--user", "alice", "--id", "nosuchpublicid00"], 1),
        (["revoke-all", "--yes"], 0),
    ],
    ids=["count", "purge", "list", "revoke", "revoke-unknown-id", "revoke-all"],
)
def test_each_command_closes_its_store(
    runner: CliRunner,
    filled: Filled,
    connections: list[sqlite3.Connection],
    command: list[str],
    exit_code: int,
) -> None:
    result = runner.invoke(app, ["sessions", *command, "--store", filled.url])

    assert result.exit_code == exit_code, result.output
    assert connections
    assert all(_closed(db) for db in connections)


@pytest.mark.parametrize(
    "command", [["purge"], ["revoke", "--user", "alice"]], ids=["purge", "revoke"]
)
def test_a_command_that_fails_on_a_locked_store_still_closes_it(
    runner: CliRunner,
    filled: Filled,
    connections: list[sqlite3.Connection],
    command: list[str],
) -> None:
    store = f"{filled.url}?busy_timeout=0.1"
    with contextlib.closing(sqlite3.connect(filled.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            result = runner.invoke(app, ["sessions", *command, "--store", store])
        finally:
            other.execute("ROLLBACK")

    assert result.exit_code == 1
    assert "unavailable" in result.stderr
    assert "Traceback" not in result.output
    assert connections
    assert all(_closed(db) for db in connections)


# -- demo -------------------------------------------------------------------------------


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_run(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def test_demo_help_lists_its_options(runner: CliRunner) -> None:
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--store",
        "--workers",
        "--secure-cookies",
        "--idle-timeout",
        "--absolute-timeout",
        "--max-sessions",
    ):
        assert option in result.output
    assert "sqlite:///coatcheck-demo.db" in result.output


def test_demo_starts_uvicorn_with_settings_in_the_environment(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    result = runner.invoke(app, ["demo", "--port", "8123", "--workers", "3"])
    assert result.exit_code == 0, result.output
    [(args, kwargs)] = uvicorn_calls
    assert args == ("coatcheck.demo.app:create_app_from_env",)
    assert kwargs["factory"] is True
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.1", 8123, 3)
    assert kwargs["log_level"] == "info"
    assert "coatcheck" in kwargs["log_config"]["loggers"]
    assert os.environ["COATCHECK_DEMO_STORE"] == "sqlite:///coatcheck-demo.db"
    assert os.environ["COATCHECK_DEMO_SECURE"] == "0"
    assert "http://127.0.0.1:8123/" in result.stdout
    assert "sqlite:///coatcheck-demo.db" in result.stdout
    assert "alice / wonderland" in result.stdout
    assert "bob / builder" in result.stdout
    assert "session (not Secure: plain HTTP, for local development only)" in result.stdout


def test_demo_with_secure_cookies_and_a_long_idle_timeout(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    args = ["demo", "--secure-cookies", "--idle-timeout", "86400", "--store", "memory://"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(uvicorn_calls) == 1
    assert "not Secure" not in result.output
    assert "__Host-session (Secure" in result.stdout
    assert "86400s idle, 86400s after login" in result.stdout  # absolute raised to match
    assert os.environ["COATCHECK_DEMO_SECURE"] == "1"
    assert os.environ["COATCHECK_DEMO_IDLE"] == "86400"
    assert os.environ["COATCHECK_DEMO_STORE"] == "memory://"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--absolute-timeout", "-5"], "--absolute-timeout"),
        (["--idle-timeout", "3600", "--absolute-timeout", "60"], "exceeds"),
        (["--store", "mongodb://localhost"], "unsupported store URL"),
        (["--store", "memory://", "--workers", "2"], "one process"),
        (["--port", "0"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--max-sessions", "0"], "--max-sessions"),
    ],
)
def test_demo_rejects_bad_values_without_a_traceback(
    runner: CliRunner,
    uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    args: list[str],
    message: str,
) -> None:
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert uvicorn_calls == []


@pytest.mark.parametrize("where", ["missing/folder/demo.db", "junk.db", "."])
def test_demo_refuses_an_unusable_sqlite_store_before_starting(
    runner: CliRunner,
    uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    tmp_path: Path,
    where: str,
) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    path = (tmp_path / where).resolve()
    result = runner.invoke(app, ["demo", "--store", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "Error: cannot use the SQLite store at" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.output
    assert uvicorn_calls == []
    assert not (tmp_path / "missing").exists()


def test_demo_creates_and_checks_a_new_sqlite_store(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]], tmp_path: Path
) -> None:
    result = runner.invoke(app, ["demo", "--store", "sqlite:///fresh.db"])
    assert result.exit_code == 0, result.output
    assert len(uvicorn_calls) == 1
    count = runner.invoke(app, ["sessions", "count", "--store", "sqlite:///fresh.db"])
    assert count.stdout.strip() == "0 live sessions"  # a coatcheck store, ready for workers


@pytest.mark.parametrize(
    "store",
    ["redis://:hunter2@127.0.0.1:{port}/0", "redis+cluster://admin:hunter2@127.0.0.1:{port}"],
)
def test_demo_banner_masks_the_store_password(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]], store: str
) -> None:
    store = store.format(port=free_port())  # nothing listens: the demo warns and starts
    result = runner.invoke(app, ["demo", "--store", store])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert ":***@127.0.0.1" in result.stdout
    assert os.environ["COATCHECK_DEMO_STORE"] == store  # the workers still get the real URL


def test_demo_starts_on_an_unreachable_store_and_says_so(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    """An outage passes: the demo starts and answers 503 until the server is back."""
    result = runner.invoke(app, ["demo", "--store", f"redis://:hunter2@127.0.0.1:{free_port()}/0"])
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.stderr
    assert "get 503 until the store answers" in result.stderr
    assert "hunter2" not in result.output
    assert len(uvicorn_calls) == 1


def test_demo_refuses_a_store_that_refuses_it(
    runner: CliRunner,
    uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    redis_server: RedisServer,
) -> None:
    """A password the server refuses is no outage: waiting would not cure it."""
    store = f"redis://nobody:hunter2@127.0.0.1:{redis_server.port}/0"
    result = runner.invoke(app, ["demo", "--store", store])
    assert result.exit_code == 1, result.output
    assert "Error: cannot use the store at redis://nobody:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.output
    assert uvicorn_calls == []


def test_demo_refuses_a_store_its_settings_contradict(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    """Checked before uvicorn starts: each worker would refuse it, at every request."""
    result = runner.invoke(app, ["demo", "--store", "cookie://", "--max-sessions", "2"])
    assert result.exit_code == 2, result.output
    assert "max_sessions_per_user needs a server-side store" in result.output
    assert uvicorn_calls == []


def test_demo_refuses_postgresql_options_that_libpq_refuses(
    runner: CliRunner,
    uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> None:
    """Not an outage: no connection can ever be made with ``sslmode=bogus``."""
    store = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/web?sslmode=bogus&timeout=0.5"
    result = runner.invoke(app, ["demo", "--store", store])
    assert result.exit_code == 1, result.output
    assert "Error: cannot use the store at postgresql://app:***@127.0.0.1" in result.stderr
    assert 'invalid sslmode value: "bogus"' in result.stderr
    assert "hunter2" not in result.output
    assert uvicorn_calls == []


def test_demo_store_errors_mask_the_password(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    for store in ("redis://:hunter2@127.0.0.1:6390/0?colour=blue", "mongo://u:hunter2@h/db"):
        result = runner.invoke(app, ["demo", "--store", store])
        assert result.exit_code == 2
        assert "--store" in result.output
        assert "hunter2" not in result.output
    assert uvicorn_calls == []


def test_demo_timeouts_also_cap_remember_me_sessions(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    help_text = runner.invoke(app, ["demo", "--help"]).output
    assert help_text.count("remember-me sessions too") == 2
    default = runner.invoke(app, ["demo", "--store", "memory://"])
    assert "remember me: 1209600s idle, 2592000s after login" in default.stdout
    short = runner.invoke(app, ["demo", "--store", "memory://", "--absolute-timeout", "3"])
    assert short.exit_code == 0, short.output
    assert "3s idle, 3s after login" in short.stdout
    assert "remember me: 3s idle, 3s after login" in short.stdout


def test_demo_on_a_port_in_use_fails_before_it_starts(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["demo", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr
    assert "another server is using it" in result.stderr
    assert "coatcheck demo on" not in result.stdout  # no banner for a server that is not
    assert uvicorn_calls == []
    assert not (tmp_path / "coatcheck-demo.db").exists()
    empty = runner.invoke(app, ["demo", "--host", ""])
    assert empty.exit_code == 2
    assert "0.0.0.0 for every interface" in empty.output


def test_demo_refuses_a_short_shared_secret(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    result = runner.invoke(
        app, ["demo", "--store", "memory://"], env={"COATCHECK_DEMO_SECRET": "x"}
    )
    assert result.exit_code == 1
    assert "COATCHECK_DEMO_SECRET must be at least 16 bytes" in result.stderr
    assert uvicorn_calls == []


def test_demo_settings_reach_the_app(
    runner: CliRunner, uvicorn_calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> None:
    args = ["demo", "--store", "memory://", "--absolute-timeout", "600", "--max-sessions", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "600s idle, 600s after login" in result.stdout  # idle lowered to match
    assert "3 sessions per user; further logins are refused" in result.stdout
    demo = create_app_from_env()
    assert demo.state.cookie_name == "session"
    assert isinstance(demo.state.store, MemoryStore)
    assert os.environ["COATCHECK_DEMO_MAX_SESSIONS"] == "3"


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coatcheck", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "coatcheck 0.1.0"


def test_the_installed_script_runs_the_cli() -> None:
    script = Path(sys.executable).with_name("coatcheck")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "coatcheck 0.1.0"


def test_without_the_cli_extra_the_script_says_what_to_install() -> None:
    """The script comes with every install; without Typer it answers in one line."""
    hide_typer = "import sys; sys.modules['typer'] = None; "
    result = subprocess.run(
        [sys.executable, "-c", hide_typer + "from coatcheck.__main__ import main; main()"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "coatcheck: 'typer' is not installed; install it with: pip install 'coatcheck[cli]'\n"
    )


def test_a_postgresql_table_of_the_first_release_is_brought_up_to_date(
    runner: CliRunner, postgres: Any
) -> None:
    """As SQLite's: during an incident, an operator must not be sent to migrations first."""
    table = f"t{os.urandom(4).hex()}"
    with postgres.connect() as db:
        db.execute(
            f"CREATE TABLE {table} (key text PRIMARY KEY, public_id text NOT NULL,"
            " data bytea NOT NULL, user_id text, created_at double precision NOT NULL,"
            " last_seen_at double precision NOT NULL, expires_at double precision NOT NULL,"
            " remember boolean NOT NULL DEFAULT false, user_agent text NOT NULL DEFAULT '',"
            " version bigint NOT NULL DEFAULT 1)"
        )
        now = time.time()
        db.execute(
            f"INSERT INTO {table} VALUES (%s, 'oldpublicid00000', '{{}}', 'alice', %s, %s, %s,"
            " false, 'Firefox', 1)",
            ("a" * 64, now, now, now + 600),
        )
    result = runner.invoke(
        app, ["sessions", "list", "--store", f"{postgres.url}?table={table}", "--user", "alice"]
    )
    assert result.exit_code == 0, result.output
    assert "oldpublicid00000" in result.stdout


def test_list_draws_in_ascii_where_the_terminal_has_no_unicode(tmp_path: Path) -> None:
    agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0 " * 4
    record = _live(key="a" * 64, public_id="asciipublicid000", user_agent=agent)
    url = _stored(tmp_path / "ascii.db", record)
    ascii_runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"}, charset="ascii")
    result = ascii_runner.invoke(app, ["sessions", "list", "--store", url, "--user", "alice"])
    assert result.exit_code == 0, result.output
    _, _, _, rule, row = result.stdout.splitlines()
    assert set(rule.strip()) == {"-"}
    assert row.endswith("...")  # cut, and said so in characters it can show
    assert "?" not in row


def test_a_redis_prefix_other_than_the_apps_is_named_when_nothing_is_found(
    runner: CliRunner, redis_server: RedisServer
) -> None:
    """An app with ``?prefix=shop`` looked at without it: "0 sessions", and after a
    breach "Revoked 0", would read as done. The prefixes that hold sessions are named."""
    url = f"redis://127.0.0.1:{redis_server.port}/9"  # a database of its own

    async def fill() -> None:
        from coatcheck.stores.redis import RedisStore

        store = RedisStore.from_url(url, prefix="shop")
        try:
            await store.save(make_record(user_id="alice"))
        finally:
            await store.aclose()

    asyncio.run(fill())
    try:
        for command in (["count"], ["revoke", "--user", "alice"], ["revoke-all", "--yes"]):
            result = runner.invoke(app, ["sessions", *command, "--store", url])
            assert result.exit_code == 0, result.output
            assert "this server holds sessions under other key prefixes ('shop')" in result.stderr
        found = runner.invoke(app, ["sessions", "count", "--store", f"{url}?prefix=shop"])
        assert found.stdout.strip() == "1 live session"
        assert "other key prefixes" not in found.stderr
    finally:
        runner.invoke(app, ["sessions", "revoke-all", "--yes", "--store", f"{url}?prefix=shop"])
