"""Cross-site request forgery protection, bound to the session.

An unsafe request (POST, PUT, PATCH, DELETE, or a safe one carrying a ``_method`` override)
passes when the browser itself says where it comes from:

1. ``Sec-Fetch-Site``: ``same-origin`` and ``none`` pass, ``cross-site`` fails, and
   ``same-site`` fails unless the app trusts its sibling origins.
2. Without it, ``Origin`` must equal one of the app's origins exactly (scheme, host and
   port); ``null`` fails.
3. With neither (a non-browser client, or a very old browser) and a session cookie, the
   request must carry a token: in the ``X-CSRF-Token`` header or a ``csrf_token`` form
   field. A logged-in session's token is an HMAC of its store key, so it dies with the
   session and changes at login. Before login a stateless signed token is accepted, so
   rendering a form never creates a store record. Tokens are masked with fresh random
   bytes every time they are issued, so a compressed page never repeats them (BREACH).

A request with neither header and no session cookie passes: it carries no credential.

A websocket handshake is checked by the first two rules alone, whatever its method:
browsers always send ``Origin`` on one, and a page cannot add a token header to it.
"""

from __future__ import annotations

import base64
import hmac
import html
import re
import secrets
import struct
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl, unquote_to_bytes

from ._asgi import Message, PathPrefixes, Receive, Scope, Send
from ._asgi import header as _header
from ._audit import security_event
from ._hashing import KeyedMac
from ._ids import store_key
from ._keys import Keyring
from ._relay import relay_page, relayable
from .config import CSRFConfig
from .session import Session

__all__ = ["hidden_input"]  # the rest serves the middleware

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_TOKEN_BYTES = 32
# Seconds an anonymous token's stamp may lie ahead of this server's clock: another
# server stamped it, and no two clocks quite agree.
_CLOCK_SKEW = 60
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")
# A form body too large to search for the token; compared by identity.
_TOO_LARGE = b"<too large>"
# The origin a browser names for a page of the app that opened a websocket.
_PAGE_SCHEME = {"ws": "http", "wss": "https"}


def overrides_method(query: bytes | None) -> bool:
    """Whether a query names a ``_method`` override, in any spelling an app's override
    middleware would decode (``%5Fmethod``, ``_%6Dethod``) and in any letter case."""
    if not query:
        return False
    lowered = query.lower()
    if b"_method" not in lowered and b"%" not in lowered:
        return False  # the usual query, told apart without parsing
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return any(name.lower() == "_method" for name, _ in pairs)


class CSRFGuard:
    """Issues tokens and checks requests; shared by every request of one middleware."""

    def __init__(
        self,
        config: CSRFConfig,
        keyring: Keyring,
        cookie_names: Sequence[str],
        clock: Callable[[], float],
        *,
        token_header: bytes | None = None,
    ) -> None:
        self.config = config
        self._token_header = token_header
        self._now = clock
        self._exempt = PathPrefixes(config.exempt_paths) if config.exempt_paths else None
        self._relayed = PathPrefixes(config.relay_paths) if config.relay_paths else None
        self._macs = [KeyedMac(key) for key in keyring.derive("csrf")]
        self._cookie_needles = tuple(name.encode("latin-1") + b"=" for name in cookie_names)
        self._header = config.header_name.encode("latin-1")
        # Found by one search in C: parsing every field of a junk 1 MB body cost a second.
        # A form_field is letters, digits, "_-.": what a browser never percent-encodes.
        self._field = config.form_field.encode("ascii")
        self._urlencoded = re.compile(rb"(?:^|&)" + re.escape(self._field) + rb"=([^&]*)")

    # -- tokens -------------------------------------------------------------------------

    def issue(self, session: Session) -> str:
        """A fresh masked token for this session (bound once it is logged in)."""
        key = session._key or (store_key(session._id) if session._id else None)
        if key is not None and session._user_id is not None:
            raw = self._bound(self._macs[0], key)
        else:
            nonce, stamp = secrets.token_bytes(8), struct.pack("!Q", int(self._now()))
            raw = nonce + stamp + self._anonymous_mac(self._macs[0], nonce + stamp)
        mask = secrets.token_bytes(_TOKEN_BYTES)
        masked = mask + bytes(a ^ b for a, b in zip(raw, mask, strict=True))
        return base64.urlsafe_b64encode(masked).rstrip(b"=").decode()

    def valid(self, token: str, session: Session) -> bool:
        raw = _unmask(token)
        if raw is None:
            return False
        if session._user_id is not None:
            if session._key is None:
                # Adopted from another middleware's cookie and not stored yet: it never
                # issued a bound token, and an anonymous one is anyone's to take.
                return False
            bound = [self._bound(mac, session._key) for mac in self._macs]
            return any(hmac.compare_digest(raw, expected) for expected in bound)
        body, mac = raw[:16], raw[16:]
        (stamp,) = struct.unpack("!Q", body[8:])
        if not -_CLOCK_SKEW <= self._now() - stamp <= self.config.anonymous_token_max_age:
            return False
        return any(hmac.compare_digest(mac, self._anonymous_mac(k, body)) for k in self._macs)

    @staticmethod
    def _bound(mac: KeyedMac, store_key_: str) -> bytes:
        return mac.digest(b"bound:" + store_key_.encode())

    @staticmethod
    def _anonymous_mac(mac: KeyedMac, body: bytes) -> bytes:
        return mac.digest(b"anonymous:" + body)[:16]

    # -- checking requests --------------------------------------------------------------

    def needs_check(self, scope: Scope) -> bool:
        # A method override inside the app could make a safe request unsafe. A page on
        # another site cannot add a header without a CORS preflight, but it can put
        # ``_method`` in a link, so only that is looked for on every request.
        if scope["method"] in SAFE_METHODS and not overrides_method(scope.get("query_string")):
            return False
        return self.config.enabled and not self._exempted(scope) and not self._by_header(scope)

    def check_handshake(self, scope: Scope) -> str | None:
        """Why a websocket handshake is refused, or None.

        Without this, a page on any site could open the app's socket with the user's
        cookie and read or change their session (cross-site websocket hijacking). A
        handshake with neither ``Sec-Fetch-Site`` nor ``Origin`` is not a browser's.
        """
        if not self.config.enabled or self._exempted(scope) or self._by_header(scope):
            return None
        return self._browser_verdict(scope) or None

    async def relay(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """For a form another site posted to a path of ``relay_paths``, answer with a page
        that posts it again from the app's own origin (see ``coatcheck._relay``). False,
        with nothing sent, where that does not apply: the guard then refuses the post."""
        if self._relayed is None or not self._relayed.match(scope) or not relayable(scope):
            return False
        body, _ = await _read_body(receive, self.config.max_form_bytes)
        page = None if body is None or body is _TOO_LARGE else relay_page(body)
        if page is None:
            return False
        await page(scope, receive, send)
        return True

    def _exempted(self, scope: Scope) -> bool:
        return self._exempt is not None and self._exempt.match(scope)

    def _by_header(self, scope: Scope) -> bool:
        """A request carrying its session in the token header cannot be forged: the
        cookie is then ignored, and a page on another site cannot add that header
        without a CORS preflight the app must have allowed."""
        token_header = self._token_header
        return token_header is not None and _header(scope["headers"], token_header) is not None

    async def check(
        self, scope: Scope, receive: Receive, session: Session
    ) -> tuple[str | None, Receive]:
        """Why the request fails, or None; and the ``receive`` the app must use."""
        verdict = self._browser_verdict(scope)
        if verdict is not None:
            return verdict or None, receive
        headers = scope["headers"]
        if not any(
            name == b"cookie" and any(needle in value for needle in self._cookie_needles)
            for name, value in headers
        ):
            return None, receive  # no session cookie: no credential to ride on
        await session.load()
        token = _header(headers, self._header)
        if token is None:
            token, receive = await self._form_token(scope, receive)
        if token is _TOO_LARGE:
            return (
                f"form body over max_form_bytes ({self.config.max_form_bytes}), not searched"
                f" for the CSRF token: send it in the {self.config.header_name} header",
                receive,
            )
        if token is None:
            return "missing CSRF token", receive
        if not self.valid(token.decode("latin-1"), session):
            return "invalid CSRF token", receive
        return None, receive

    def _browser_verdict(self, scope: Scope) -> str | None:
        """What the browser's own headers decide: "" passes, a reason refuses, and None
        means it sent neither ``Sec-Fetch-Site`` nor ``Origin``."""
        headers = scope["headers"]
        fetch_site = _header(headers, b"sec-fetch-site")
        if fetch_site in (b"same-origin", b"none"):
            return ""
        origin = _header(headers, b"origin")
        if (
            origin is not None
            and self.config.origins
            and origin.decode("latin-1").lower() in self.config.origins
        ):
            return ""  # listed: trusted whatever the browser calls it (same-site, cross-site)
        if fetch_site is not None:
            if fetch_site == b"same-site":
                return "" if self.config.trust_same_site else _SAME_SITE
            return "cross-site request"
        if origin is not None:
            if origin.decode("latin-1").lower() in self._origins(scope):
                return ""
            return _NOT_LISTED if self.config.origins else _ORIGIN_REFUSED
        return None

    def _origins(self, scope: Scope) -> tuple[str, ...]:
        if self.config.origins:
            return self.config.origins  # type: ignore[return-value]
        host = _header(scope["headers"], b"host")
        if host is None:
            return ()
        scheme = scope.get("scheme", "http")
        scheme = _PAGE_SCHEME.get(scheme, scheme)
        return (f"{scheme}://{host.decode('latin-1')}".lower(),)

    async def _form_token(self, scope: Scope, receive: Receive) -> tuple[bytes | None, Receive]:
        content_type = (_header(scope["headers"], b"content-type") or b"").split(b";")[0]
        if content_type.strip().lower() not in _FORM_TYPES:
            return None, receive
        body, replay = await _read_body(receive, self.config.max_form_bytes)
        if body is None or body is _TOO_LARGE:
            return body, replay
        if content_type.strip().lower() == _FORM_TYPES[0]:
            found = self._urlencoded.search(body)
            if found is None:
                return None, replay
            return unquote_to_bytes(found[1].replace(b"+", b" ")), replay
        if self._field not in body:
            return None, replay  # no such part: not worth parsing (nor its parser's logs)
        return await _multipart_field(scope, body, self.config.form_field), replay


class _Markup(str):
    """Text that is already HTML: Jinja and MarkupSafe insert what ``__html__`` gives
    as it is, where they escape a plain ``str`` into visible text."""

    __slots__ = ()

    def __html__(self) -> str:
        return str(self)


def hidden_input(session: Session, field: str | None = None) -> str:
    """``<input type="hidden" ...>`` carrying a fresh token, for server-rendered forms:
    ``{{ csrf_input }}`` in a Jinja template (it is marked as HTML, so not escaped).

    The field is the one the guard reads (``CSRFConfig.form_field``) unless named.
    """
    name = html.escape(field or session._persistence.config.csrf.form_field)
    return _Markup(f'<input type="hidden" name="{name}" value="{session.csrf_token()}">')


def _unmask(token: str) -> bytes | None:
    if len(token) != 86:  # base64 of 64 bytes, unpadded
        return None
    try:
        masked = base64.urlsafe_b64decode(token + "==")
    except (ValueError, TypeError):
        return None
    if len(masked) != 2 * _TOKEN_BYTES:
        return None
    mask, payload = masked[:_TOKEN_BYTES], masked[_TOKEN_BYTES:]
    return bytes(a ^ b for a, b in zip(payload, mask, strict=True))


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the whole body and give back a ``receive`` that replays it: ``_TOO_LARGE``
    past ``limit``, None when the client went away."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _TOO_LARGE, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _multipart_field(scope: Scope, body: bytes, field: str) -> bytes | None:
    try:
        from starlette.requests import Request
    except ImportError:  # pragma: no cover - Starlette is a hard dependency
        return None
    sent = False

    async def once() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
    except Exception:  # any parse failure simply means "no token"
        security_event("forgery", "unparseable multipart body in a CSRF check")
        return None
    value = form.get(field)
    await form.close()
    return value.encode("utf-8", "replace") if isinstance(value, str) else None


# Why an ``Origin`` is refused. Nothing the client sent is echoed (a body or a log line
# holds no text of the client's choosing); behind a proxy that changes the host or
# scheme (nginx's own WebSocket example does), the app's idea of itself is what differs.
_ORIGIN_REFUSED = (
    "origin not allowed: not the app's own as the app sees it (from the Host header and "
    "the scheme), nor one listed in CSRFConfig(origins=[...]); behind a proxy that changes "
    "the host or scheme, pass on Host and X-Forwarded-Proto"
)
# Most often a front end of the app's own on another port or subdomain (a dev server's).
_SAME_SITE = (
    "same-site request from another origin: to trust a front end of this app on another "
    "port or subdomain, list its origin in CSRFConfig(origins=[...]), or set "
    "trust_same_site=True"
)
_NOT_LISTED = (
    "origin not allowed: not one listed in CSRFConfig(origins=[...]), which replaces the "
    "app's own origin: list that one too"
)
