"""Endpoint secrets: made once, shown once, stored sealed with AES-GCM.

The api must sign with the secret later, so unlike an API key it cannot be kept as a
hash. It is sealed with a key derived from BABELQ_WEBHOOK_SECRET_KEY: a copy of the
database alone does not reveal it. Without that setting (development and tests only:
production refuses to create endpoints) it is stored unsealed, marked as such.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Bytes of randomness in a secret (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32
#: Prefixes of stored secrets: sealed with the configured key, or kept as they are.
SEALED, PLAIN = "v1:", "plain:"
#: Bound to every sealed secret, so a sealed value of another purpose does not open here.
_CONTEXT = b"babelq webhook endpoint secret"


class SecretKeyMissing(Exception):
    """A sealed secret (or production) needs BABELQ_WEBHOOK_SECRET_KEY, and it is not set."""


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks form: whsec_ and base64 of random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _aead(key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(key.encode()).digest())


def seal(secret: str, key: str | None) -> str:
    """The value to store: sealed when a key is configured."""
    if not key:
        return PLAIN + secret
    nonce = os.urandom(12)
    box = _aead(key).encrypt(nonce, secret.encode(), _CONTEXT)
    return SEALED + base64.urlsafe_b64encode(nonce + box).decode()


def unseal(stored: str, key: str | None) -> str:
    """The secret of a stored value; SecretKeyMissing when it is sealed and no key is set."""
    if stored.startswith(PLAIN):
        return stored[len(PLAIN):]
    if not key:
        raise SecretKeyMissing("BABELQ_WEBHOOK_SECRET_KEY is needed to open endpoint secrets")
    raw = base64.urlsafe_b64decode(stored[len(SEALED):])
    return _aead(key).decrypt(raw[:12], raw[12:], _CONTEXT).decode()
