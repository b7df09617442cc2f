"""Store URLs as they may be shown: in errors, logs and the CLI, never with a password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``.

    Cluster URLs list several hosts; each ``user:password@`` in the network location is
    masked. A URL that cannot be parsed is masked from its scheme on.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, _, _ = url.partition("://")
        return f"{scheme}://***"
    if "@" not in parts.netloc:
        return url
    hosts = []
    for host in parts.netloc.split(","):
        userinfo, at, location = host.rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        elif at:
            userinfo = "***"  # redis://secret@host: a password given without a user name
        hosts.append(f"{userinfo}{at}{location}")
    return urlunsplit(parts._replace(netloc=",".join(hosts)))
