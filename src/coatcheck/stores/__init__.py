"""Session stores, and choosing one by URL.

``memory://`` and ``sqlite:///relative/path.db`` (four slashes for an absolute
path) are built in; each backend lives in its own module. Redis URLs (``redis://``,
``rediss://``, ``unix://``, for Cluster ``redis+cluster://host:port,host:port`` and for
Sentinel ``redis+sentinel://host:port,host:port/service``, each also with TLS as
``rediss+…``) need the ``redis`` extra, and PostgreSQL URLs (``postgresql://``,
``postgres://``) the ``postgres`` extra, each imported only when such a URL is used.
``cookie://`` (``?max_bytes=4096``) keeps each session, encrypted, in its cookie, with
the ``cookie`` extra and the app's ``secret_keys``.

A package can serve a scheme of its own: an entry point in the ``coatcheck.stores``
group, named after the scheme, that takes the URL and returns the store. The CLI and
the demo then reach that store by URL too. Built-in schemes cannot be taken over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from ..exceptions import ConfigurationError
from ._redact import redact
from .base import SessionRecord, Store, check_store
from .memory import MemoryStore
from .moving import MovingStore
from .sqlite import SQLiteStore

__all__ = [
    "MemoryStore",
    "MovingStore",
    "SQLiteStore",
    "SessionRecord",
    "Store",
    "store_from_url",
]

# Served by coatcheck.stores.redis, imported only when one of them is used.
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
# Served by coatcheck.stores.postgres, imported only when one of them is used.
POSTGRES_SCHEMES = ("postgresql", "postgres")
SUPPORTED_SCHEMES = ("memory", "sqlite", *REDIS_SCHEMES, *POSTGRES_SCHEMES, "cookie")
_SQLITE_FORMS = "SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db"
ENTRY_POINTS = "coatcheck.stores"  # where packages name the schemes of their stores


def store_from_url(url: str) -> Store:
    """Build a store from a URL such as ``sqlite:///sessions.db?busy_timeout=2``."""
    try:
        parts = urlsplit(url)  # refuses an unbalanced "[" (IPv6)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.scheme in REDIS_SCHEMES:
            from .redis import RedisStore  # here: `import coatcheck` must not need redis

            return RedisStore.from_url(url)
        if parts.scheme in POSTGRES_SCHEMES:
            from .postgres import PostgresStore  # here: `import coatcheck` must not need psycopg

            return PostgresStore.from_url(url)
        if parts.scheme == "cookie":
            from .cookie import CookieStore  # here: `import coatcheck` must not need cryptography

            if parts.netloc or parts.path:
                raise ConfigurationError(
                    f"cookie store URLs look like cookie://, got {redact(url)!r}"
                )
            cookie = CookieStore(max_bytes=int(options.pop("max_bytes", 4096)))
            _no_leftovers(options, url)
            return cookie
        if parts.scheme == "memory":
            if parts.netloc or parts.path:
                raise ConfigurationError(
                    f"memory store URLs look like memory://, got {redact(url)!r}"
                )
            memory = MemoryStore(max_entries=int(options.pop("max_entries", 10_000)))
            _no_leftovers(options, url)
            return memory
        if parts.scheme == "sqlite":
            _check_sqlite_url(url, parts.netloc, parts.path)
            path = parts.path[1:]
            store = SQLiteStore(
                path,
                busy_timeout=float(options.pop("busy_timeout", 5.0)),
                table=options.pop("table", "coatcheck_sessions"),
            )
            _no_leftovers(options, url)
            return store
        if parts.scheme not in SUPPORTED_SCHEMES and (factory := _registered(parts.scheme)):
            return _built_by(factory, url)
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"invalid store URL {redact(url)!r}: {exc}") from exc
    raise ConfigurationError(
        f"unsupported store URL {redact(url)!r}; supported schemes: "
        + ", ".join(f"{scheme}://" for scheme in SUPPORTED_SCHEMES)
        + f", and those of installed packages that name them under {ENTRY_POINTS!r}"
    )


def _built_by(factory: Callable[[str], object], url: str) -> Store:
    """The store another package's ``factory`` makes of ``url``: whatever it raises is a
    configuration error, with the password masked wherever the URL is quoted."""
    try:
        custom = factory(url)
    except Exception as exc:  # another package's code: any error, said the same way
        told = str(exc).replace(url, redact(url))
        raise ConfigurationError(f"invalid store URL {redact(url)!r}: {told}") from None
    check_store(custom)  # its package's promise, checked where a typo would hide
    return cast(Store, custom)


def _registered(scheme: str) -> Callable[[str], object] | None:
    """The factory an installed package names for ``scheme``, if any."""
    if not scheme:
        return None
    from importlib.metadata import entry_points  # here: it costs `import coatcheck` time

    for point in entry_points(group=ENTRY_POINTS):
        if point.name.lower() == scheme:  # a URL's scheme arrives lowercased
            try:
                factory: Callable[[str], object] = point.load()
                return factory
            except Exception as exc:  # any import failure of another package's code
                raise ConfigurationError(
                    f"the store for {scheme}:// ({point.value}) cannot be loaded: {exc}"
                ) from exc
    return None


def _check_sqlite_url(url: str, netloc: str, path: str) -> None:
    """Refuse the forms that would otherwise quietly open some other file."""
    if "#" in url:
        # urlsplit takes it for a fragment: sqlite:///a#b.db would open the file "a".
        raise ConfigurationError(
            f"{_SQLITE_FORMS}, and a path cannot hold '#'; got {redact(url)!r}"
        )
    if not url.partition(":")[2].startswith("//"):
        # sqlite:/tmp/x.db would open the relative path tmp/x.db.
        raise ConfigurationError(f"{_SQLITE_FORMS} (three slashes at least), got {redact(url)!r}")
    if netloc or len(path) < 2:
        raise ConfigurationError(f"{_SQLITE_FORMS}, got {redact(url)!r}")


def _no_leftovers(options: dict[str, str], url: str) -> None:
    if options:
        raise ConfigurationError(
            f"unknown option(s) {sorted(options)} in store URL {redact(url)!r}"
        )
