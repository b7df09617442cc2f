"""The demo's few knobs, and how they travel from the CLI to uvicorn workers.

``coatcheck demo --workers N`` hands uvicorn an import string, so settings cannot
be passed as arguments: they go through environment variables instead, and both
sides use this module so the names and the parsing cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from ..config import CookieConfig, CSRFConfig, SessionConfig
from ..exceptions import ConfigurationError

# Each input is a name, a password or a cart item: far below this. Bodies are read only
# up to it, by the CSRF check too, so that no client can make the app hold megabytes per
# request (Django's limit: 2.5 MB).
MAX_BODY = 16_384

DEFAULT_STORE = "sqlite:///coatcheck-demo.db"
# How recent a sign-in must be for signing out everywhere: older ones confirm the password.
RECENT_LOGIN = timedelta(minutes=5)
# A sign-in on a shared computer ends after this long unused (or the configured idle
# limit, when that is shorter), and is never remembered.
SHARED_COMPUTER_IDLE = timedelta(minutes=5)
# Where a client that is not a browser (curl, a mobile app) carries its session.
SESSION_HEADER = "X-Session-Token"
ENV_STORE = "COATCHECK_DEMO_STORE"
ENV_SECURE = "COATCHECK_DEMO_SECURE"
ENV_IDLE = "COATCHECK_DEMO_IDLE"
ENV_ABSOLUTE = "COATCHECK_DEMO_ABSOLUTE"
ENV_MAX_SESSIONS = "COATCHECK_DEMO_MAX_SESSIONS"
ENV_SECRET = "COATCHECK_DEMO_SECRET"  # noqa: S105 - the variable's name, not a secret

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """What ``coatcheck demo`` lets you choose; ``None`` timeouts keep the library defaults."""

    store_url: str = DEFAULT_STORE
    secure_cookies: bool = False
    idle_timeout: int | None = None
    absolute_timeout: int | None = None
    # Signs CSRF tokens; every worker must share it. Empty: a random per-process key.
    secret: str = field(default="", repr=False)
    # Logins past this many sessions per user are refused; None: no limit.
    max_sessions: int | None = None

    def session_config(self) -> SessionConfig:
        """Build the config, reconciling a lone timeout with the other default.

        Raising only the idle timeout above the 12 h default absolute limit (or
        lowering only the absolute limit below the 30 min idle default) would
        otherwise be rejected although the intent is clear. A timeout given also caps
        remember-me sessions: with ``--absolute-timeout 3`` nobody expects a remembered
        login to last the default 30 days.
        """
        defaults = SessionConfig(cookie=CookieConfig(secure=self.secure_cookies))
        idle = defaults.normal.idle if self.idle_timeout is None else self.idle_timeout
        absolute = (
            defaults.normal.absolute if self.absolute_timeout is None else self.absolute_timeout
        )
        if self.absolute_timeout is None and self.idle_timeout is not None:
            absolute = max(absolute, self.idle_timeout)
        if self.idle_timeout is None and self.absolute_timeout is not None:
            idle = min(idle, self.absolute_timeout)
        remember_idle, remember_absolute = defaults.remember.idle, defaults.remember.absolute
        if self.absolute_timeout is not None:
            remember_absolute = min(remember_absolute, self.absolute_timeout)
        if self.idle_timeout is not None:
            remember_idle = min(remember_idle, self.idle_timeout)
        remember_idle = min(remember_idle, remember_absolute)
        return SessionConfig(
            cookie=defaults.cookie,
            idle_timeout=idle,
            absolute_timeout=absolute,
            remember_idle_timeout=remember_idle,
            remember_absolute_timeout=remember_absolute,
            secret_keys=[self.secret] if self.secret else [],
            token_header=SESSION_HEADER,
            record_ip=True,  # the device list says where each session was last used
            csrf=CSRFConfig(max_form_bytes=MAX_BODY),
            max_sessions_per_user=self.max_sessions,
            at_session_limit="end_oldest" if self.max_sessions is None else "refuse_login",
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that make :meth:`from_env` return these settings."""
        env = {ENV_STORE: self.store_url, ENV_SECURE: "1" if self.secure_cookies else "0"}
        env[ENV_IDLE] = "" if self.idle_timeout is None else str(self.idle_timeout)
        env[ENV_ABSOLUTE] = "" if self.absolute_timeout is None else str(self.absolute_timeout)
        env[ENV_SECRET] = self.secret
        env[ENV_MAX_SESSIONS] = "" if self.max_sessions is None else str(self.max_sessions)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DemoSettings:
        """Read the settings back; a malformed value is a ``ConfigurationError``."""
        env = os.environ if environ is None else environ
        secure = env.get(ENV_SECURE, "").strip().lower()
        if secure not in _TRUE + _FALSE:
            raise ConfigurationError(f"{ENV_SECURE} must be 1 or 0, got {secure!r}")
        return cls(
            store_url=env.get(ENV_STORE) or DEFAULT_STORE,
            secure_cookies=secure in _TRUE,
            idle_timeout=_whole(env, ENV_IDLE),
            absolute_timeout=_whole(env, ENV_ABSOLUTE),
            secret=env.get(ENV_SECRET, ""),
            max_sessions=_whole(env, ENV_MAX_SESSIONS),
        )


def _whole(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
