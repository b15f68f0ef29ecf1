"""Who may read the API, by ``settings.API_AUTH``.

- ``"none"``: public, as Enhydris always was;
- ``"token"``: ``Authorization: Token <t>`` (or ``Bearer <t>``) with one of
  ``settings.API_TOKENS``;
- ``"basic"``: HTTP basic authentication of an active local user.

Settings are read on every request (so a test can override them). Credentials are
never logged, not even the rejected ones.
"""

import base64
import binascii
import hmac
import logging

from django.conf import settings
from django.contrib.auth import authenticate

from .errors import ApiError

logger = logging.getLogger(__name__)

REALM = "dbsync API"
TOKEN_SCHEMES = frozenset({"token", "bearer"})


def check_credentials(request):
    """Return if the request may read the API; raise :class:`ApiError` if not."""
    mode = str(getattr(settings, "API_AUTH", "none") or "none").strip().lower()
    if mode == "none":
        return
    if mode == "token":
        check_token(request)
    elif mode == "basic":
        check_basic(request)
    else:
        # Fail closed: a typo in the setting must not make a private API public.
        logger.error("API_AUTH is %r; expected 'none', 'token' or 'basic'", mode)
        raise ApiError(500, "The API's authentication is misconfigured on this server.")


def split_authorization(request):
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower(), credentials.strip()


def check_token(request):
    challenge = {"WWW-Authenticate": f'Token realm="{REALM}"'}
    scheme, token = split_authorization(request)
    if scheme not in TOKEN_SCHEMES or not token:
        refuse(request, "no token given")
        raise ApiError(
            401, "Authentication required: send 'Authorization: Token <token>'.", challenge
        )
    if not is_valid_token(token, settings.API_TOKENS):
        refuse(request, "invalid token")
        raise ApiError(401, "Invalid token.", challenge)


def is_valid_token(token, valid_tokens):
    given = token.encode()
    found = False
    # Compare with every token, in constant time, so timing reveals nothing.
    for valid in valid_tokens:
        found |= bool(valid) and hmac.compare_digest(given, valid.encode())
    return found


def check_basic(request):
    challenge = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
    scheme, encoded = split_authorization(request)
    if scheme != "basic" or not encoded:
        refuse(request, "no basic credentials given")
        raise ApiError(401, "Authentication required: use HTTP basic authentication.", challenge)
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        refuse(request, "malformed basic credentials")
        raise ApiError(401, "Malformed basic credentials.", challenge) from None
    username, _, password = decoded.partition(":")
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        refuse(request, "wrong username or password")
        raise ApiError(401, "Wrong username or password.", challenge)


def refuse(request, reason):
    logger.warning("API request for %s refused: %s", request.path, reason)
