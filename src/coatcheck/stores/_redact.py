"""Store URLs as they may be shown: in errors, logs and the CLI, never with a password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``.

    The userinfo is everything before the last ``@`` of the network location, as the
    Redis clients read it, so a password may hold ``@`` or ``,`` (Cluster URLs list
    hosts after it). A URL that cannot be parsed, or whose ``@`` fell outside the
    network location (a ``/`` or ``?`` in the password ends it early), is masked from
    its scheme on.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _masked(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return _masked(url) if parts.netloc and "@" in url else url
    user, colon, _ = userinfo.partition(":")
    # redis://secret@host gives a password without a user name.
    shown = f"{user}:***" if colon else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hosts}"))


def _masked(url: str) -> str:
    scheme, _, _ = url.partition("://")
    return f"{scheme}://***"
