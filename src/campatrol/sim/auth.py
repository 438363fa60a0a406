"""RTSP authentication as a camera checks it: Basic and Digest MD5 (RFC 2617)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Final

REALM: Final = "campatrol-sim"
_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def parse_digest(header_value: str) -> dict[str, str]:
    """Return the parameters of a `Digest k=v, k="v"` credentials string."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(header_value):
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = (
            re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        )
    return params


class Authenticator:
    """Checks the Authorization header of requests to one camera."""

    def __init__(self, mode: str, username: str, password: str) -> None:
        self.mode = mode
        self._username = username
        self._password = password
        self._nonce = secrets.token_hex(16)

    def challenge(self) -> str:
        """Return the WWW-Authenticate value a 401 response carries."""
        if self.mode == "digest":
            return f'Digest realm="{REALM}", nonce="{self._nonce}", algorithm="MD5"'
        return f'Basic realm="{REALM}"'

    def check(self, method: str, authorization: str | None) -> bool:
        """Whether the request's credentials are right for this camera."""
        if self.mode == "none":
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if self.mode == "basic" and scheme.lower() == "basic":
            return self._check_basic(credentials.strip())
        if self.mode == "digest" and scheme.lower() == "digest":
            return self._check_digest(method, parse_digest(credentials))
        return False

    def _check_basic(self, credentials: str) -> bool:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self._username}:{self._password}"
        return hmac.compare_digest(decoded.encode("utf-8"), expected.encode("utf-8"))

    def _check_digest(self, method: str, params: dict[str, str]) -> bool:
        needed = ("username", "realm", "nonce", "uri", "response")
        if any(key not in params for key in needed):
            return False
        if (params["username"], params["realm"], params["nonce"]) != (
            self._username,
            REALM,
            self._nonce,
        ):
            return False
        ha1 = _md5(f"{self._username}:{REALM}:{self._password}")
        ha2 = _md5(f"{method}:{params['uri']}")
        if params.get("qop"):
            # RFC 2617 section 3.2.2.1, qop=auth.
            parts = (ha1, params["nonce"], params.get("nc", ""), params.get("cnonce", ""))
            expected = _md5(":".join((*parts, params["qop"], ha2)))
        else:
            expected = _md5(f"{ha1}:{params['nonce']}:{ha2}")
        return hmac.compare_digest(expected, params["response"].lower())


def has_credentials(authorization: str | None) -> bool:
    """Whether a request carried credentials at all (a first, unauthenticated try does not)."""
    return bool(authorization and authorization.strip())
