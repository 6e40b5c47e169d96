"""The UI's sign-in session and CSRF tokens: pure functions, no HTTP framework.

The session cookie holds the API token itself (base64url), after a random per-sign-in nonce:
``<nonce>.<token>``. Every request authenticates that token through the same ``TokenStore`` the
JSON API uses, so a revoked token signs its browser sessions out at once, on every replica, and no
session store is needed. The cookie is HttpOnly (page scripts never read it), SameSite=Strict (no
other site's page makes the browser send it) and Secure when the UI is reached over https.

The CSRF token of a session is HMAC-SHA256(key = the API token, message = the nonce): it changes
with every sign-in, only a holder of the token can compute it, and a page of another site can
neither read it nor the cookie. Every state-changing form carries it in a hidden field and the
server compares it in constant time. Before sign-in there is no token yet: the sign-in form is
protected by a double-submit nonce (a cookie of its own, SameSite=Strict, and the same value in
the form), and every POST must come from the UI's own origin when the browser names one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

SESSION_COOKIE = "trainyard_session"
SIGN_IN_COOKIE = "trainyard_sign_in"
CSRF_FIELD = "csrf"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600  # a working day; the token itself lives on until it is revoked
_CSRF_CONTEXT = b"trainyard-ui-csrf:"


@dataclass(frozen=True)
class SessionCookie:
    nonce: str
    token: str

    def value(self) -> str:
        return f"{self.nonce}.{base64.urlsafe_b64encode(self.token.encode()).decode()}"

    def csrf(self) -> str:
        """The CSRF token of this session (the hidden field of every form)."""
        return hmac.new(self.token.encode(), _CSRF_CONTEXT + self.nonce.encode(), hashlib.sha256).hexdigest()

    def accepts(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf().encode())


def new_session(token: str) -> SessionCookie:
    return SessionCookie(secrets.token_urlsafe(18), token)


def parse_session(value: str | None) -> SessionCookie | None:
    """The session a cookie holds, or None for a missing or malformed one."""
    if not value or len(value) > 4096:
        return None
    nonce, dot, encoded = value.partition(".")
    if not dot or not nonce or not encoded:
        return None
    try:
        token = base64.urlsafe_b64decode(encoded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return SessionCookie(nonce, token) if token else None


def new_sign_in_nonce() -> str:
    return secrets.token_urlsafe(18)


def nonce_matches(cookie: str | None, field: str | None) -> bool:
    """The sign-in form's double-submit check: the form's nonce is the cookie's."""
    if not cookie or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """A POST's ``Origin`` names this server (``host`` is the request's Host header). A request
    without ``Origin`` (not a browser, or an old one) passes here and is held to the CSRF token."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def safe_next(target: str | None, default: str = "/ui/jobs") -> str:
    """Where to go after sign-in: only a path of the UI itself, never another site."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target
