from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from coatcheck import ConfigurationError, CookieConfig, CSRFConfig, SessionConfig, StarletteImport


def test_defaults_are_the_safe_ones() -> None:
    cookie = CookieConfig()
    assert (cookie.name, cookie.secure, cookie.httponly, cookie.samesite, cookie.path) == (
        "__Host-session",
        True,
        True,
        "lax",
        "/",
    )
    assert cookie.domain is None


def test_plain_http_development_cookie_drops_the_prefix() -> None:
    assert CookieConfig(secure=False).name == "session"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"samesite": "none", "secure": False}, "samesite='none' requires secure"),
        ({"name": "__Host-sid", "domain": "example.com"}, "must not set a domain"),
        ({"name": "__Host-sid", "secure": False}, "requires secure=True"),
        ({"name": "__Host-sid", "path": "/app"}, "path='/'"),
        ({"name": "__Secure-sid", "secure": False}, "requires secure=True"),
        ({"name": "bad name"}, "not a valid cookie name"),
        ({"name": "sid", "domain": "example.com; Max-Age=0"}, "unsafe characters"),
        ({"name": "sid", "domain": "example.com;Max-Age=0"}, "unsafe characters"),
        ({"path": "/x\r\nSet-Cookie: a=b"}, "unsafe characters"),
        ({"path": "relative"}, "must start with '/'"),
        ({"samesite": "Lax"}, "samesite must be"),
    ],
)
def test_contradictions_fail_at_start_up(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CookieConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "origin",
    [
        "example.com",
        "https://example.com/app",
        "https://user@example.com",
        "*",
        "null",
        "https://example.com:port",
        "ftp://example.com",
        "https://example.com?x=1",
    ],
)
def test_a_csrf_origin_a_browser_would_never_send_fails_at_start_up(origin: str) -> None:
    """Accepted, it would match no request and refuse them all with no hint why."""
    with pytest.raises(ConfigurationError, match="is not an origin"):
        CSRFConfig(origins=[origin])


def test_csrf_origins_are_kept_as_browsers_send_them() -> None:
    origins = ["HTTPS://App.Example.com/", "http://127.0.0.1:8000", "https://[::1]:8443"]
    assert CSRFConfig(origins=origins).origins == (
        "https://app.example.com",
        "http://127.0.0.1:8000",
        "https://[::1]:8443",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Iterated, "/webhooks" would have been "/", "w", "e" ...: every path exempt.
        ({"exempt_paths": "/webhooks"}, "exempt_paths takes a list of path prefixes"),
        ({"exempt_paths": ["webhooks"]}, "start with '/'"),
        ({"exempt_paths": [""]}, "start with '/'"),
        ({"origins": "https://example.com"}, "origins takes a list of origins"),
    ],
)
def test_csrf_lists_given_a_string_or_a_bare_path_fail_at_start_up(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CSRFConfig(**options)  # type: ignore[arg-type]


def test_prefix_rules_ignore_case() -> None:
    with pytest.raises(ConfigurationError):
        CookieConfig(name="__HOST-sid", secure=False)


def test_durations_accept_seconds_or_timedelta() -> None:
    config = SessionConfig(idle_timeout=timedelta(minutes=5), absolute_timeout=3600)
    assert config.idle_timeout == 300
    assert config.normal.idle == 300
    assert config.normal.absolute == 3600
    assert config.lifetime(remember=True) == config.remember
    assert config.remember.idle == 14 * 86400
    assert config.remember.absolute == 30 * 86400


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": 0}, "positive"),
        ({"idle_timeout": 1.5}, "whole number"),
        ({"idle_timeout": True}, "whole number"),
        ({"idle_timeout": float("inf")}, "whole number"),
        ({"absolute_timeout": float("nan")}, "whole number"),
        # Past 100 years, a deadline could pass the year 9999: a 500 at each read.
        ({"idle_timeout": 10**12, "absolute_timeout": 10**12}, "at most 100 years"),
        ({"remember_absolute_timeout": timedelta(days=365 * 101)}, "at most 100 years"),
        ({"idle_timeout": "1800"}, "whole number"),
        ({"idle_timeout": 100, "absolute_timeout": 50}, "exceeds"),
        ({"remember_idle_timeout": timedelta(days=60)}, "remember_idle_timeout"),
        ({"refresh_fraction": 0.5}, "refresh_fraction"),
        ({"eager_paths": "/admin"}, "list of path prefixes"),
        ({"eager_paths": ["admin"]}, "start with '/'"),
        ({"retry_after": 0}, "retry_after"),
        # Retry-After takes whole seconds; a string would fail only at the first outage.
        ({"retry_after": 2.5}, "retry_after must be a whole number"),
        ({"retry_after": "5"}, "retry_after must be a whole number"),
        ({"max_sessions_per_user": 2.5}, "max_sessions_per_user must be a whole number"),
        ({"max_sessions_per_user": 0}, "max_sessions_per_user"),
        ({"max_session_bytes": float("inf")}, "max_session_bytes must be a whole number"),
        ({"max_session_bytes": 1000}, "at least 1024"),
        ({"secret_keys": "x" * 32}, "takes a list"),
        ({"secret_keys": b"x" * 32}, "takes a list"),
        ({"secret_keys": ["x" * 32, "too short"]}, "at least 16 bytes"),
        ({"secret_keys": [b"fifteen bytes.."]}, "at least 16 bytes"),
        ({"secret_keys": [None]}, "must be text or bytes, not NoneType"),
        ({"secret_keys": [12345678901234567890]}, "must be text or bytes, not int"),
    ],
)
def test_bad_session_settings_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SessionConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"anonymous_token_max_age": -1}, "anonymous_token_max_age"),
        ({"max_form_bytes": -1}, "max_form_bytes"),
        ({"max_form_bytes": True}, "max_form_bytes"),
        ({"header_name": "bad header"}, "not a header name"),
        ({"form_field": ""}, "form_field"),
        ({"form_field": 'a"b'}, "plain field name"),  # escaped in a multipart body
        ({"form_field": "csrf token"}, "plain field name"),
    ],
)
def test_bad_csrf_settings_are_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CSRFConfig(**options)  # type: ignore[arg-type]


def test_the_bounds_themselves_are_allowed() -> None:
    SessionConfig(refresh_fraction=0)  # write the expiry back on every read
    SessionConfig(refresh_fraction=0.1)
    SessionConfig(idle_timeout=60, absolute_timeout=60)
    SessionConfig(secret_keys=["x" * 16, b"y" * 16])


def test_secret_keys_are_read_once_and_may_be_starlette_secrets() -> None:
    from starlette.datastructures import Secret

    # An iterator, as from splitting an environment variable: checked and kept.
    keys = SessionConfig(secret_keys=map(str.strip, ["x" * 16 + " ", " " + "y" * 16]))  # type: ignore[arg-type]
    assert keys.secret_keys == ("x" * 16, "y" * 16)
    secret = SessionConfig(secret_keys=[Secret("z" * 16)])
    assert secret.secret_keys == ("z" * 16,)
    assert StarletteImport(Secret("q" * 16)).secret_key == "q" * 16  # type: ignore[arg-type]


def test_csrf_origins_are_written_as_browsers_send_them() -> None:
    origins = ["https://app.example.com:443", "http://app.example.com:80/", "https://a.test:8443"]
    assert CSRFConfig(origins=origins).origins == (
        "https://app.example.com",
        "http://app.example.com",
        "https://a.test:8443",
    )
    for never in ("https://bücher.example", "https://*.example.com"):
        with pytest.raises(ConfigurationError, match="would never match"):
            CSRFConfig(origins=[never])


def test_the_keyring_refuses_a_short_key_however_it_is_built() -> None:
    from coatcheck._keys import Keyring

    with pytest.raises(ValueError, match="at least 16 bytes"):
        Keyring([b"fifteen bytes.."])
    assert Keyring([b"sixteen bytes..."]).derive("csrf")


def test_a_stores_own_retry_after_is_whole_seconds_too(tmp_path: Path) -> None:
    import redis.asyncio

    from coatcheck.stores.postgres import PostgresStore
    from coatcheck.stores.redis import RedisStore
    from coatcheck.stores.sqlite import SQLiteStore

    builders = [
        lambda seconds: SQLiteStore(tmp_path / "s.db", retry_after=seconds),
        lambda seconds: RedisStore(redis.asyncio.Redis(), retry_after=seconds),
        lambda seconds: PostgresStore("postgresql://app@db/web", retry_after=seconds),
    ]
    for build in builders:
        for seconds in (2.5, "5", 0):
            with pytest.raises(ConfigurationError, match="retry_after must be a whole number"):
                build(seconds)
        assert build(7).retry_after == 7


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"csrf": None}, r"csrf takes a CSRFConfig, not None; .*CSRFConfig\(enabled=False\)"),
        ({"cookie": {"secure": False}}, "cookie takes a CookieConfig, not {'secure': False}"),
        ({"clock": None}, "clock takes a function returning seconds, not None"),
        ({"starlette_import": "session"}, "starlette_import takes a StarletteImport or None"),
        ({"starsessions_import": True}, "starsessions_import takes a StarsessionsImport or None"),
    ],
)
def test_a_wrong_kind_of_value_fails_at_start_up(options: dict[str, Any], message: str) -> None:
    """Accepted, ``csrf=None`` (a guess at turning CSRF off) failed every request with
    a 500 instead, and uvicorn's ``--lifespan auto`` started the app all the same."""
    with pytest.raises(ConfigurationError, match=message):
        SessionConfig(**options)
