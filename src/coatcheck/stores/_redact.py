"""Store URLs as they may be shown: in errors, logs and the CLI, never with a password."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

# Query options that hold a password: libpq's, and redis-py's for unix:// sockets.
_SECRET_OPTIONS = frozenset({"password", "passwd", "sslpassword"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# The same in libpq's keyword form, quoted ('a b\'c') or not.
_KEYWORD_PASSWORD = re.compile(
    r"\b((?:password|passwd|sslpassword)\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE
)


def redact(url: str) -> str:
    """``url`` with the password of its userinfo, and of any ``?password=`` option,
    replaced by ``***``.

    The userinfo is everything before the last ``@`` of the network location, as the
    Redis clients read it, so a password may hold ``@`` or ``,`` (Cluster URLs list
    hosts after it). A URL that cannot be parsed, or with an ``@`` past the network
    location (a ``/``, ``?`` or ``#`` in the password ends the location early;
    ``redis:/:secret@host`` has none), is masked from its scheme on. A string that is
    no URL (libpq's ``host=db password=...``) keeps all but its passwords.
    """
    if "://" not in url:
        if "@" in url and _SCHEME.match(url):
            return _masked(url)  # redis:/:secret@host, a slash short of a URL
        # Not a URL: a libpq keyword string ("host=db password=..."), or a path.
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _masked(url)
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # An "@" past the network location: a password holding "/", "?" or "#" ended
        # the location early, and what follows it is the rest of that password.
        return _masked(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            shown = f"{user}:***"
        elif parts.scheme.lower().startswith("postgres"):
            shown = user  # libpq reads a lone name as the user, never as a password
        else:
            shown = "***"  # some Redis clients read redis://secret@host as a password
        url = urlunsplit(parts._replace(netloc=f"{shown}@{hosts}"))
    # Pieces of the query are masked where they stand: parsed and joined again, a URL
    # such as sqlite:///a.db would lose the slashes of its empty network location.
    base, question, query = url.partition("?")
    if not question:
        return url
    return base + question + "&".join(map(_option, query.split("&")))


def _option(piece: str) -> str:
    name, equals, _ = piece.partition("=")
    if equals and unquote(name).strip().lower() in _SECRET_OPTIONS:
        return f"{name}=***"
    return piece


def _masked(url: str) -> str:
    scheme, _, _ = url.partition(":")
    return f"{scheme}://***"
