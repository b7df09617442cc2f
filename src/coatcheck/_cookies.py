"""Reading the session cookie strictly and writing ``Set-Cookie`` headers."""

from __future__ import annotations

from ._asgi import Headers
from ._audit import security_event
from .config import CookieConfig

EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"  # an Expires in the past: the cookie is gone
# Beyond this a Cookie header is junk; servers refuse far less (nginx 8 KB a line). A
# smaller cap would read a session as absent on sites whose other cookies are large.
_MAX_COOKIE_HEADER = 65_536
# The longest cookie browsers keep, name included (RFC 6265 asks for at least this):
# a longer session value was never set by us.
_MAX_COOKIE = 4_096
# More cookies of the name than this is junk too: no browser sends one name more than a
# few times (once per matching path). Other matches (``my_session=``) only cost a step
# each, bounded by the size limit.
_MAX_HITS = 16
_BLANKS = b" \t"
_SEMICOLON = ord(";")


def cookie_needle(name: str) -> bytes:
    """What :func:`read_cookie` looks for, computed once per app rather than per request."""
    return name.encode("latin-1") + b"="


def read_cookie(headers: Headers, needle: bytes) -> str | None:
    """Return the one value sent for the cookie ``needle`` names, or ``None``.

    The name must match exactly (case-sensitive). Two different values for it
    (cookie tossing from a sibling host or a longer path) mean no value at all,
    whatever their order. A non-ASCII or oversized value, Cookie headers of junk size
    together, or a name repeated past any browser's habit, is treated as absent.
    """
    found: bytes | None = None
    size = hits = 0
    for key, raw in headers:
        if key != b"cookie":
            continue
        size += len(raw)  # over every Cookie header: HTTP/2 sends one per cookie
        if size > _MAX_COOKIE_HEADER:
            return None  # decided by length alone: no work in proportion to the junk
        # Searching beats splitting the header into pairs: this runs on every read.
        at = raw.find(needle)
        while at != -1:
            start = at
            while start and raw[start - 1] in _BLANKS:
                start -= 1
            # Only a pair's start counts: ``xsession=`` or ``a=b session=c`` is not ours.
            if start == 0 or raw[start - 1] == _SEMICOLON:
                hits += 1
                if hits > _MAX_HITS:
                    return None
                end = raw.find(b";", at)
                value = raw[at + len(needle) : None if end == -1 else end].rstrip(b" \t")
                if found is not None and value != found:
                    # A sibling host or a longer path tossing a cookie of the same name.
                    name = needle[:-1].decode("latin-1")
                    security_event(
                        "cookie",
                        f"two different session cookies {name!r} in one request (one left by "
                        "an earlier Path or Domain setting, or tossed by a sibling host): "
                        "ignoring both",
                    )
                    return None
                found = value
            at = raw.find(needle, at + 1)
    if found is None or len(found) > _MAX_COOKIE:
        return None
    try:
        return found.decode("ascii")
    except UnicodeDecodeError:
        return None


def read_header_token(headers: Headers, name: bytes) -> str | None:
    """The session token sent in header ``name``: None when the header is absent, and
    ``""`` (no session) when its value is not one token of ASCII text."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            if found is not None and value != found:
                return ""  # sent twice over: neither is trusted
            found = value
    if found is None:
        return None
    found = found.strip(_BLANKS)
    if len(found) > _MAX_COOKIE or not found.isascii():
        return ""
    return found.decode("ascii")


class CookieWriter:
    """Builds the two ``Set-Cookie`` values once the attributes are known."""

    def __init__(self, config: CookieConfig) -> None:
        attributes = [f"Path={config.path}"]
        if config.domain is not None:
            attributes.append(f"Domain={config.domain}")
        if config.httponly:
            attributes.append("HttpOnly")
        if config.secure:
            attributes.append("Secure")
        attributes.append(f"SameSite={config.samesite.capitalize()}")
        if config.partitioned:
            attributes.append("Partitioned")
        self._name = config.name
        self._suffix = "; " + "; ".join(attributes)

    def set(self, session_id: str, max_age: int | None) -> bytes:
        lifetime = "" if max_age is None else f"; Max-Age={max_age}"
        return f"{self._name}={session_id}{lifetime}{self._suffix}".encode("latin-1")

    def clear(self) -> bytes:
        return f"{self._name}=; Max-Age=0; Expires={EPOCH}{self._suffix}".encode("latin-1")
