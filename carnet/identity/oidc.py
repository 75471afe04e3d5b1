"""OpenID Connect id_tokens for SMART apps (`openid fhirUser`), signed RS256 with joserfc.

The signing key is an RSA key in a PEM file beside the audit signing key (mode 0600, outside
the database), made on first use; every worker reads the same file. Apps check the signature
against `/oauth/jwks` (the public half only), named `jwks_uri` in the SMART discovery.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

ALGORITHM = "RS256"


@functools.cache
def _key(path: Path) -> RSAKey:
    try:
        return RSAKey.import_key(path.read_bytes())
    except FileNotFoundError:
        pass
    key = RSAKey.generate_key(2048, private=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two workers starting at once keep one key, the first written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return RSAKey.import_key(path.read_bytes())
    with os.fdopen(fd, "wb") as out:
        out.write(key.as_pem(private=True))
    return key


def sign(path: Path, claims: dict[str, Any]) -> str:
    key = _key(path)
    return jwt.encode({"alg": ALGORITHM, "kid": key.thumbprint(), "typ": "JWT"}, claims, key)


def public_jwks(path: Path) -> dict[str, Any]:
    key = _key(path)
    public = dict(key.as_dict(private=False))
    public.update({"kid": key.thumbprint(), "use": "sig", "alg": ALGORITHM})
    return {"keys": [public]}
