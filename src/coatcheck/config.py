"""Validated settings: cookie attributes and session lifetimes.

Everything is checked once, at start-up, so a contradiction (``SameSite=None``
without ``Secure``, a ``__Host-`` cookie with a ``Domain``) stops the app
instead of producing cookies that browsers silently drop.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from starlette.datastructures import Secret

from .exceptions import ConfigurationError

# Seconds (a whole number, as an int or a float such as 1800.0) or a timedelta.
Duration = float | timedelta
# A signing key: Starlette's ``Secret`` (from its ``Config``) is read as its text.
SecretKey = str | bytes | Secret
SameSite = Literal["lax", "strict", "none"]
# What a login past ``max_sessions_per_user`` does: end the oldest others, or fail.
SessionLimitPolicy = Literal["end_oldest", "refuse_login"]

_FIELD = re.compile(r"[A-Za-z0-9_.\-]+")  # a form field's name, the same in any encoding
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: a valid cookie name
_ATTRIBUTE_VALUE = re.compile(r"^[\x21-\x3a\x3c-\x7e]+$")  # printable ASCII without ';'


# The longest duration a setting may have: a deadline past it would be a date Python's
# datetime cannot hold (past the year 9999), a 500 at the first read of expires_at.
_LONGEST = 100 * 365 * 86400


def _seconds(name: str, value: Duration) -> int:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not _whole_seconds(seconds):
        raise ConfigurationError(
            f"{name} must be a positive whole number of seconds, at most 100 years, got {value!r}"
        )
    return int(seconds)


def check_count(name: str, value: object, least: int) -> None:
    """Refuse ``value`` unless it is a whole number of at least ``least``: a float or a
    string would fail only later, mid-request, or go out as ``Retry-After: 2.5``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(
            f"{name} must be a whole number of at least {least}, got {value!r}"
        )


def _whole_seconds(seconds: object) -> bool:
    """Whether ``seconds`` is a positive whole number (not a bool, NaN or infinity) of
    at most a hundred years."""
    return (
        isinstance(seconds, (int, float))
        and not isinstance(seconds, bool)
        and 0 < seconds <= _LONGEST
        and int(seconds) == seconds
    )


def _secret(key: object) -> str | bytes:
    """A key as text or bytes; Starlette's ``Secret`` (from its ``Config``) as its text."""
    if isinstance(key, (str, bytes)):
        return key
    if isinstance(key, Secret):
        return str(key)
    raise ConfigurationError(f"each secret key must be text or bytes, not {type(key).__name__}")


def _check_attributes(**attributes: str | None) -> None:
    """Refuse cookie attribute values that could end the attribute or start another."""
    for name, value in attributes.items():
        if value is not None and not _ATTRIBUTE_VALUE.match(value):
            raise ConfigurationError(f"cookie {name} {value!r} contains unsafe characters")


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """Attributes of the session cookie; the defaults are the safe ones.

    ``name`` defaults to ``__Host-session`` when ``secure`` (the browser then refuses
    the cookie from sibling hosts and plain HTTP) and to ``session`` otherwise.
    """

    name: str = ""
    secure: bool = True
    httponly: bool = True
    samesite: SameSite = "lax"
    path: str = "/"
    domain: str | None = None
    partitioned: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", "__Host-session" if self.secure else "session")
        if not _TOKEN.match(self.name):
            raise ConfigurationError(f"cookie name {self.name!r} is not a valid cookie name")
        if self.samesite not in ("lax", "strict", "none"):
            raise ConfigurationError(
                f"samesite must be 'lax', 'strict' or 'none', got {self.samesite!r}"
            )
        if self.samesite == "none" and not self.secure:
            raise ConfigurationError("samesite='none' requires secure=True: browsers reject it")
        if self.partitioned and not self.secure:
            raise ConfigurationError("partitioned=True requires secure=True: browsers reject it")
        _check_attributes(path=self.path, domain=self.domain)
        if not self.path.startswith("/"):
            raise ConfigurationError(f"cookie path must start with '/', got {self.path!r}")
        lowered = self.name.lower()
        if lowered.startswith("__host-"):
            if not self.secure:
                raise ConfigurationError(f"a {self.name!r} cookie requires secure=True")
            if self.domain is not None:
                raise ConfigurationError(f"a {self.name!r} cookie must not set a domain")
            if self.path != "/":
                raise ConfigurationError(f"a {self.name!r} cookie must use path='/'")
        elif lowered.startswith("__secure-") and not self.secure:
            raise ConfigurationError(f"a {self.name!r} cookie requires secure=True")


@dataclass(frozen=True, slots=True)
class CSRFConfig:
    """CSRF settings; on by default.

    ``origins`` lists the exact origins (``https://app.example.com``) whose pages may
    send unsafe requests and open websockets: the app's own, and any other it trusts (a
    front end on another host). A listed ``Origin`` passes whatever ``Sec-Fetch-Site``
    says; when the list is empty, the request's own scheme and ``Host`` are used.
    ``exempt_paths`` are path prefixes left unchecked (a webhook that authenticates by
    signature). At ``relay_paths``, a form that another site's page posted (an identity
    provider's ``form_post``, a SAML POST binding) is posted again from a page of the
    app's own, with the session cookie; its handler must check what the provider's
    protocol binds to the session, such as OAuth's ``state``.
    """

    enabled: bool = True
    origins: Sequence[str] = ()
    trust_same_site: bool = False
    header_name: str = "x-csrf-token"
    form_field: str = "csrf_token"
    exempt_paths: Sequence[str] = ()
    relay_paths: Sequence[str] = ()
    anonymous_token_max_age: int = 24 * 3600
    max_form_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        origins = _listed("origins", self.origins, "origins")
        object.__setattr__(self, "origins", tuple(_origin(o) for o in origins))
        object.__setattr__(self, "exempt_paths", _path_prefixes("exempt_paths", self.exempt_paths))
        object.__setattr__(self, "relay_paths", _path_prefixes("relay_paths", self.relay_paths))
        if not isinstance(self.header_name, str) or not _TOKEN.match(self.header_name):
            raise ConfigurationError(f"header_name {self.header_name!r} is not a header name")
        object.__setattr__(self, "header_name", self.header_name.lower())
        if not isinstance(self.form_field, str) or not _FIELD.fullmatch(self.form_field):
            # A quote or a space would be escaped in a multipart body, and never match.
            raise ConfigurationError(
                f"form_field must be a plain field name (letters, digits, _ - .), "
                f"got {self.form_field!r}"
            )
        check_count("anonymous_token_max_age", self.anonymous_token_max_age, 1)
        check_count("max_form_bytes", self.max_form_bytes, 1)


def _listed(name: str, values: Sequence[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple, refusing a lone string: iterated, it would give one
    entry per character, and ``"/"`` among them would cover every path."""
    if isinstance(values, str):
        raise ConfigurationError(f"{name} takes a list of {what}, not a string; write [{values!r}]")
    return tuple(values)


def _path_prefixes(name: str, values: Sequence[str]) -> tuple[str, ...]:
    prefixes = _listed(name, values, "path prefixes")
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ConfigurationError(f"every entry of {name} must start with '/', got {prefix!r}")
    return prefixes


def _origin(value: str) -> str:
    """An origin as a browser's ``Origin`` header names it: ``https://host[:port]``.
    Anything else would never match one, refusing every request with no hint why."""
    origin = value.rstrip("/").lower()
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018  # a port that is not a number raises here
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
    ):
        raise ConfigurationError(
            f"CSRF origin {value!r} is not an origin: give scheme, host and any port, "
            "as a browser sends them (https://app.example.com, http://127.0.0.1:8000)"
        )
    if not origin.isascii() or "*" in origin:
        raise ConfigurationError(
            f"CSRF origin {value!r} would never match: browsers send a host in its ASCII "
            "(xn--) form, and every origin is listed in full, with no wildcards"
        )
    if parts.port == _DEFAULT_PORTS[parts.scheme]:
        # Browsers leave the scheme's own port out of Origin.
        return origin.rsplit(":", 1)[0]
    return origin


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class StarletteImport:
    """Adopt the sessions of Starlette's ``SessionMiddleware``, so switching to coatcheck
    logs nobody out.

    A request that has no coatcheck session but a valid cookie of Starlette's (signed
    with ``secret_key``, at most ``max_age`` old) gets a new server-side session holding
    its data, and the old cookie is cleared in the same response. With ``user_key``, the
    new session is also logged in as ``data[user_key]``, so it appears in that user's
    device list. Each copy of an old cookie keeps working until ``max_age`` runs out, as
    it did under Starlette: set ``until`` to end the import for good, and remove this
    setting once every old cookie has expired. Adopted sessions are remember-me
    sessions, with a persistent cookie as Starlette's was; ``remember=False`` gives them
    the limits of a browser session instead.
    """

    secret_key: SecretKey = field(repr=False)
    cookie_name: str = "session"
    max_age: Duration = timedelta(days=14)  # Starlette's default
    until: datetime | None = None
    user_key: str | None = None
    remember: bool = True
    path: str = "/"
    domain: str | None = None
    partitioned: bool = False  # as Starlette's own setting: its clearing must say so too

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_key", _secret(self.secret_key))
        if not self.secret_key:
            raise ConfigurationError("StarletteImport needs the secret_key Starlette signed with")
        object.__setattr__(self, "max_age", _seconds("max_age", self.max_age))
        _check_import(self.cookie_name, self.until, self.path, self.domain)


@dataclass(frozen=True, slots=True)
class StarsessionsImport:
    """Adopt the sessions that starsessions keeps in Redis, so switching to coatcheck
    logs nobody out.

    A request that has no coatcheck session but starsessions' cookie, whose ID is still
    stored under ``prefix`` in the Redis that ``url`` names (any of
    :meth:`~coatcheck.stores.redis.RedisStore.from_url`'s forms), gets a new server-side
    session holding its data, without starsessions' ``__metadata__``. Once that session
    is stored, the old key is deleted and the old cookie cleared, so no copy of it
    adopts anything again (a page's parallel requests still join that session for a
    minute). ``user_key``, ``until`` and ``remember`` work as for
    :class:`StarletteImport`; starsessions' cookies end with the browser by default, and
    so do the adopted sessions unless ``remember=True``. Needs the ``redis`` extra.
    """

    url: str = field(repr=False)  # may hold a password
    prefix: str = "starsessions."  # starsessions' RedisStore default
    cookie_name: str = "session"
    until: datetime | None = None
    user_key: str | None = None
    remember: bool = False
    path: str = "/"
    domain: str | None = None
    partitioned: bool = False  # the old cookie was set Partitioned

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigurationError("StarsessionsImport needs the URL of starsessions' Redis")
        if not self.prefix:
            raise ConfigurationError("StarsessionsImport needs the key prefix starsessions used")
        _check_import(self.cookie_name, self.until, self.path, self.domain)


# Headers a client or proxy already gives another meaning.
_TAKEN_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "host", "origin", "sec-fetch-site", "vary"}
)


def _check_token_header(name: str, csrf_header: str) -> None:
    if not _TOKEN.match(name):
        raise ConfigurationError(f"token_header {name!r} is not a valid header name")
    if name.lower() in _TAKEN_HEADERS or name.lower() == csrf_header:
        raise ConfigurationError(
            f"token_header {name!r} already means something else; "
            "give the session a header of its own, such as 'X-Session-Token'"
        )


def _check_import(cookie_name: str, until: datetime | None, path: str, domain: str | None) -> None:
    if not _TOKEN.match(cookie_name):
        raise ConfigurationError(f"cookie name {cookie_name!r} is not a valid cookie name")
    if until is not None and until.utcoffset() is None:
        raise ConfigurationError("until must be an aware datetime (with a time zone)")
    _check_attributes(path=path, domain=domain)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Idle and absolute limits, in seconds, of one kind of session."""

    idle: int
    absolute: int

    def deadline(self, last_seen_at: float, created_at: float) -> float:
        """When a session last seen at ``last_seen_at`` dies: the earlier of the limits."""
        return min(last_seen_at + self.idle, created_at + self.absolute)

    def shortened(self, idle: int, absolute: int) -> Lifetime:
        """These limits, cut to those a login chose (0: this one's); never longer, so a
        configuration made stricter after that login still holds for it."""
        cut = min(absolute or self.absolute, self.absolute)
        return Lifetime(min(idle or self.idle, self.idle, cut), cut)


def _wall_clock() -> float:
    """``time.time()``, looked up at each call, so that a library that replaces
    ``time.time`` in tests (freezegun) moves coatcheck's clock too."""
    return time.time()


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Everything the middleware needs to know besides the store.

    Defaults follow OWASP ASVS level 2: a browser session ends after 30 minutes of
    inactivity or 12 hours after login; a remember-me session after 14 idle days or
    30 days in all. The sliding expiry is written back at most once per
    ``refresh_fraction`` of the idle window, so reads rarely write and the idle window
    can shrink by at most that fraction, never grow. An open WebSocket checks its
    session against the store at its first message after each ``websocket_recheck``
    (or half the session's idle limit, when shorter): it is closed once the session has
    ended elsewhere, and the client's messages count as use (the app's sends do not).
    ``websocket_activity(message)``, when given, says which of them do: a client library
    that answers the server's pings by itself (Socket.IO's ``"3"``) would otherwise keep
    an open tab signed in past its idle limit.

    ``token_header`` (say ``"X-Session-Token"``) lets clients that are not browsers (a
    mobile app, a CLI) carry the session in that header instead of the cookie: a
    request that sends it is answered in it, and never gets a cookie.

    ``record_ip`` keeps, with each session, the client address its last save came
    from (``scope["client"]``: behind a proxy, let the server trust the proxy's
    forwarded headers), so a device list can say where each session is used. Off by
    default, since an address is personal data.

    ``encrypt_data`` seals each session's data before it reaches a server-side store,
    with a key derived from ``secret_keys`` (which it needs): a dump of the store then
    shows neither a usable ticket nor what the sessions hold.
    """

    cookie: CookieConfig = field(default_factory=CookieConfig)
    idle_timeout: Duration = timedelta(minutes=30)
    absolute_timeout: Duration = timedelta(hours=12)
    remember_idle_timeout: Duration = timedelta(days=14)
    remember_absolute_timeout: Duration = timedelta(days=30)
    refresh_fraction: float = 0.1
    eager_paths: Sequence[str] = ()
    retry_after: int = 5
    max_session_bytes: int = 64 * 1024
    max_sessions_per_user: int | None = None
    at_session_limit: SessionLimitPolicy = "end_oldest"
    secret_keys: Sequence[SecretKey] = field(default=(), repr=False)
    csrf: CSRFConfig = field(default_factory=CSRFConfig)
    token_header: str | None = None
    record_ip: bool = False
    encrypt_data: bool = False
    starlette_import: StarletteImport | None = None
    starsessions_import: StarsessionsImport | None = None
    websocket_recheck: Duration | None = timedelta(minutes=1)
    websocket_activity: Callable[[MutableMapping[str, Any]], bool] | None = None
    clock: Callable[[], float] = _wall_clock
    normal: Lifetime = field(init=False)
    remember: Lifetime = field(init=False)

    def __post_init__(self) -> None:
        # Checked first, and by type: a wrong kind of value here (csrf=None, a dict for
        # cookie) would otherwise pass start-up and fail every request with a 500.
        for name, kind, hint in (
            ("cookie", CookieConfig, ""),
            ("csrf", CSRFConfig, "; to turn the check off, csrf=CSRFConfig(enabled=False)"),
            ("starlette_import", (StarletteImport, type(None)), ""),
            ("starsessions_import", (StarsessionsImport, type(None)), ""),
        ):
            value = getattr(self, name)
            if not isinstance(value, kind):
                wanted = kind.__name__ if isinstance(kind, type) else f"{kind[0].__name__} or None"
                raise ConfigurationError(f"{name} takes a {wanted}, not {value!r}{hint}")
        if not callable(self.clock):
            raise ConfigurationError(
                f"clock takes a function returning seconds, not {self.clock!r}"
            )
        normal = Lifetime(
            _seconds("idle_timeout", self.idle_timeout),
            _seconds("absolute_timeout", self.absolute_timeout),
        )
        remember = Lifetime(
            _seconds("remember_idle_timeout", self.remember_idle_timeout),
            _seconds("remember_absolute_timeout", self.remember_absolute_timeout),
        )
        for lifetime, label in ((normal, ""), (remember, "remember_")):
            if lifetime.idle > lifetime.absolute:
                raise ConfigurationError(
                    f"{label}idle_timeout ({lifetime.idle}s) exceeds "
                    f"{label}absolute_timeout ({lifetime.absolute}s)"
                )
        if not 0 <= self.refresh_fraction <= 0.1:
            raise ConfigurationError("refresh_fraction must be between 0 and 0.1")
        object.__setattr__(self, "eager_paths", _path_prefixes("eager_paths", self.eager_paths))
        check_count("max_session_bytes", self.max_session_bytes, 1024)
        if self.max_sessions_per_user is not None:
            check_count("max_sessions_per_user", self.max_sessions_per_user, 1)
        if self.at_session_limit not in ("end_oldest", "refuse_login"):
            raise ConfigurationError(
                f"at_session_limit must be 'end_oldest' or 'refuse_login', "
                f"not {self.at_session_limit!r}"
            )
        if self.at_session_limit == "refuse_login" and self.max_sessions_per_user is None:
            raise ConfigurationError(
                "at_session_limit='refuse_login' needs max_sessions_per_user (the limit)"
            )
        if self.starlette_import is not None and self.starsessions_import is not None:
            raise ConfigurationError(
                "import from Starlette's SessionMiddleware or from starsessions, not both"
            )
        if self.token_header is not None:
            _check_token_header(self.token_header, self.csrf.header_name)
        check_count("retry_after", self.retry_after, 1)  # whole seconds: what Retry-After allows
        if isinstance(self.secret_keys, (str, bytes)):
            raise ConfigurationError("secret_keys takes a list: the first signs, all verify")
        # Read once: an iterator checked here would be empty by the time keys are made.
        keys = tuple(_secret(key) for key in self.secret_keys)
        if any(len(k.encode() if isinstance(k, str) else k) < 16 for k in keys):
            raise ConfigurationError("each of secret_keys needs at least 16 bytes")
        if self.encrypt_data and not keys:
            # A per-process key would leave every session unreadable after a restart,
            # and to every other worker.
            raise ConfigurationError(
                "encrypt_data needs SessionConfig(secret_keys=[...]) shared by every process"
            )
        object.__setattr__(self, "secret_keys", keys)
        if self.websocket_recheck is not None:
            recheck = _seconds("websocket_recheck", self.websocket_recheck)
            object.__setattr__(self, "websocket_recheck", recheck)
        if self.websocket_activity is not None and not callable(self.websocket_activity):
            raise ConfigurationError(
                "websocket_activity takes a function of a client's message (the ASGI "
                "websocket.receive dict) that says whether it counts as use, or None"
            )
        object.__setattr__(self, "idle_timeout", normal.idle)
        object.__setattr__(self, "absolute_timeout", normal.absolute)
        object.__setattr__(self, "remember_idle_timeout", remember.idle)
        object.__setattr__(self, "remember_absolute_timeout", remember.absolute)
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "remember", remember)

    def login_limits(
        self,
        remember: bool,
        idle: float | timedelta | None,
        absolute: float | timedelta | None,
    ) -> tuple[int, int]:
        """The idle and absolute limits, in seconds, that a login asks for (0: none).

        ``ValueError`` unless each is a positive whole number of seconds, at most the
        configured limit of its kind: a login may tighten its limits, never loosen them.
        One equal to the configured limit is that limit (0), so a login made again with
        a session's own ``idle_timeout`` and ``absolute_timeout`` keeps what it had.
        """
        lifetime = self.lifetime(remember)
        prefix = "remember_" if remember else ""
        return (
            _shorter("idle_timeout", idle, lifetime.idle, prefix),
            _shorter("absolute_timeout", absolute, lifetime.absolute, prefix),
        )

    def lifetime(self, remember: bool, idle: int = 0, absolute: int = 0) -> Lifetime:
        """The limits of a session: of its kind, or shorter ones its login chose."""
        lifetime = self.remember if remember else self.normal
        return lifetime.shortened(idle, absolute) if idle or absolute else lifetime


def _shorter(name: str, value: float | timedelta | None, configured: int, prefix: str) -> int:
    """``value`` in whole seconds (0 for None); see :meth:`SessionConfig.login_limits`."""
    if value is None:
        return 0
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not _whole_seconds(seconds):
        raise ValueError(f"{name} must be a positive whole number of seconds, got {value!r}")
    if seconds > configured:
        raise ValueError(
            f"{name} ({int(seconds)}s) exceeds the configured {prefix}{name} ({configured}s): "
            "a login can shorten its session's limits, not lengthen them"
        )
    return 0 if seconds == configured else int(seconds)
