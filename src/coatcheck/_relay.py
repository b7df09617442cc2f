"""Relaying a form that another site posted, so that it arrives with the session.

An identity provider answering with ``response_mode=form_post`` (Sign in with Apple), a
SAML POST binding, a payment provider's 3-D Secure return: each has the browser post a
form to the app from the provider's page. A ``SameSite=Lax`` session cookie does not go
with that post, and the CSRF guard refuses it. For a path in ``CSRFConfig.relay_paths``
the guard answers instead with a page of the app's own that posts the same fields to the
same address again; that post comes from the app's origin, with the session cookie, and
passes the guard. The handler then checks what the provider's protocol binds to the
session (OAuth's ``state``, SAML's ``InResponseTo``), as it must wherever it runs.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import parse_qsl

from ._asgi import ASGIApp, Scope, header, response

_FORM = b"application/x-www-form-urlencoded"


def relayable(scope: Scope) -> bool:
    """Whether the browser says this is a form another site's page posted, as the top
    document: only such a post can be shown the relay page, and the post it makes then
    says ``same-origin``, so it is never relayed again."""
    headers = scope["headers"]
    content_type = (header(headers, b"content-type") or b"").split(b";")[0].strip().lower()
    return (
        scope["method"] == "POST"
        and content_type == _FORM
        and header(headers, b"sec-fetch-site") in (b"cross-site", b"same-site")
        and header(headers, b"sec-fetch-mode") == b"navigate"
    )


def relay_page(body: bytes) -> ASGIApp | None:
    """The page that posts the fields of ``body`` again, or None when they are not the
    UTF-8 text a browser's page could post as they are."""
    try:
        fields = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    nonce = secrets.token_urlsafe(16)
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields
    )
    # No action: the form goes to this page's own address, the one the provider posted
    # to, query and proxy prefix included. The button is for a browser without scripts.
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Continuing</title></head>'
        f'<body><form method="post">{inputs}<button type="submit">Continue</button></form>'
        # The form's own submit(), which a field named "submit" would hide.
        f'<script nonce="{nonce}">HTMLFormElement.prototype.submit.call(document.forms[0])'
        "</script></body></html>"
    ).encode()
    # Framed only by the app's own pages: a card issuer's 3-D Secure challenge answers
    # in a frame of the checkout page.
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; base-uri 'none'; frame-ancestors 'self'"
    )
    return response(
        200, b"text/html; charset=utf-8", page, [(b"content-security-policy", policy.encode())]
    )
