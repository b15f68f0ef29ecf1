"""Remote credentials encrypted at rest (Fernet), and the model field that stores them.

A stored secret is ``fernet:<token>``: the prefix tells ciphertext from anything
else in the column. Encrypting uses the newest key; decrypting tries every key,
so a key can be retired in steps: put a new one first, run
``manage.py dbsync_rotatesecrets``, then drop the old one.

The keys are DBSYNC_SECRET_KEYS (Fernet keys, newest first). Keys derived from
DJANGO_SECRET_KEY and DJANGO_SECRET_KEY_FALLBACKS always follow them, for
decrypting only when DBSYNC_SECRET_KEYS is set: a deployment that starts with the
derived keys and later sets its own loses nothing (rotate once, and the derived
keys are no longer needed).

A value that no key decrypts is read as an :class:`UnreadableSecret`, not an
exception: the admin still opens the remote and takes a new secret, an unrelated
save keeps the ciphertext as it is (the key may yet be restored), and the HTTP
client refuses to sync with it (see ``Database.check_secrets``).
"""

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "fernet:"
DERIVATION_INFO = b"dbsync remote credentials"
GENERATE_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)


class UnreadableSecret:
    """A stored secret that none of the keys decrypts (the key is lost or changed).

    Truthy (a secret is stored), never equal to a string, and printed as nothing,
    so that no page or log shows the ciphertext and no request sends it.
    """

    def __init__(self, stored, reason):
        self.stored = stored
        self.reason = reason

    def __bool__(self):
        return True

    def __str__(self):
        return ""

    def __repr__(self):
        return f"<UnreadableSecret: {self.reason}>"


def derive_key(secret_key):
    """A Fernet key from a Django SECRET_KEY (HKDF-SHA256, bound to this purpose)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DERIVATION_INFO).derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(raw)


def key_list():
    """The keys, newest first, as configured now (settings may change in tests)."""
    explicit = tuple(k.strip() for k in settings.DBSYNC_SECRET_KEYS if k.strip())
    derived = tuple(
        derive_key(k) for k in (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS) if k
    )
    return explicit + derived


@functools.lru_cache(maxsize=8)
def _multifernet(keys):
    fernets = []
    for position, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"DBSYNC_SECRET_KEYS: key number {position} is not a Fernet key (32 bytes, "
                f"URL-safe base64); {GENERATE_HINT}"
            ) from exc
    return MultiFernet(fernets)


def multifernet():
    return _multifernet(key_list())


def is_encrypted(stored):
    return isinstance(stored, str) and stored.startswith(PREFIX)


def encrypt(clear):
    """``fernet:<token>`` of ``clear`` under the newest key."""
    return PREFIX + multifernet().encrypt(clear.encode()).decode()


def decrypt(stored):
    """The clear text of a stored secret; ValueError saying why when it cannot be read."""
    if not is_encrypted(stored):
        raise ValueError("it is not encrypted (written around the application?)")
    try:
        return multifernet().decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise ValueError(
            "none of the keys decrypts it (the key it was encrypted with is gone)"
        ) from None


def rotate(stored):
    """The stored secret re-encrypted under the newest key (ValueError as ``decrypt``)."""
    decrypt(stored)  # the same error, with its reason, for what cannot be rotated
    return PREFIX + multifernet().rotate(stored[len(PREFIX) :].encode()).decode()


class EncryptedTextField(models.TextField):
    """Text stored encrypted (``fernet:…``), read back in clear.

    Empty stays empty (no secret). Lookups on it are meaningless: every encryption
    of a value differs.
    """

    def from_db_value(self, value, expression, connection):
        if not value:
            return ""
        try:
            return decrypt(value)
        except ValueError as exc:
            return UnreadableSecret(value, str(exc))

    def to_python(self, value):
        if value is None or isinstance(value, UnreadableSecret):
            return value
        return super().to_python(value)

    def get_prep_value(self, value):
        if isinstance(value, UnreadableSecret):
            return value.stored  # kept as it was: restoring the key makes it readable
        value = super().get_prep_value(value)
        if not value:
            return "" if value is not None else None
        if is_encrypted(value):  # already ciphertext (loaddata of what dumpdata wrote)
            return value
        return encrypt(value)

    def value_to_string(self, obj):
        # What serializers (dumpdata) write: the ciphertext, never the clear text.
        return self.get_prep_value(self.value_from_object(obj))
