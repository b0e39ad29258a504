"""Who is calling: the Authenticator turns a call's credentials (a bearer token, a client
certificate) into a Principal, verifying each credential once and then trusting it for a
short time (see CredentialCache).

Rules:
- A bearer token starting `tkd_` is an API token; any other is a JWT (if JWT is on).
- A bearer token, when sent, decides: it must be valid even if a client certificate was
  presented too (so a service holding a certificate can act as a user with that user's
  token).
- Without a bearer token, a verified client certificate (mTLS) names the caller: its
  first URI subject alternative name (e.g. a SPIFFE id), else its first DNS name, else its
  subject's common name.
- Otherwise the call is UNAUTHENTICATED.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from trackd.server.domain.auth import tokens
from trackd.server.domain.auth.jwt import JwtVerifier
from trackd.server.domain.auth.principal import Principal
from trackd.server.domain.auth.tokens import Verified
from trackd.server.errors import Unauthenticated
from trackd.server.store.pool import Database

# How long a verified JWT is trusted before it is verified again (never past its `exp`).
JWT_TTL = 300.0


class CredentialCache:
    """Verified credentials by the SHA-256 of their text (the text itself is not kept as a
    key), each until min(now + ttl, the credential's expiry). At most `size` entries; the
    least recently used leaves first."""

    def __init__(self, size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    @staticmethod
    def key(credential: str) -> bytes:
        """The cache key of a credential."""
        return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()

    def get(self, key: bytes) -> Principal | None:
        """The principal of a credential verified recently and still valid, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, verified: Verified, ttl: float) -> None:
        """Trusts `verified` for `ttl` seconds, or until it expires if sooner."""
        until = self.clock() + ttl
        if verified.expires is not None:
            until = min(until, verified.expires / 1000)
        if until <= self.clock():
            return
        self._entries[key] = (verified.principal, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class Authenticator:
    """Authenticates calls when auth is on.

    Args:
        db: where API tokens are looked up.
        jwt: the JWT verifier, or None if JWTs are not accepted.
        mtls: whether a verified client certificate names the caller.
        token_ttl: seconds a checked API token is trusted before it is checked again (a
            revoked token stops working within this time).
    """

    def __init__(
        self,
        db: Database,
        *,
        jwt: JwtVerifier | None = None,
        mtls: bool = False,
        token_ttl: float = 5.0,
    ) -> None:
        self.db = db
        self.jwt = jwt
        self.mtls = mtls
        self.token_ttl = token_ttl
        self.cache = CredentialCache()
        self._certs: OrderedDict[bytes, Principal] = OrderedDict()

    async def authenticate(self, bearer: str | None, cert_pem: bytes | None) -> Principal:
        """The principal of a call sending `bearer` (the text after `Bearer `, or None) over
        a connection whose verified client certificate is `cert_pem` (or None).

        Raises:
            Unauthenticated: no usable credential, or a bad one (see the module's rules).
            Unavailable: the token store or the JWKS cannot be reached.
        """
        if bearer is not None:
            return await self._bearer(bearer)
        if cert_pem is not None and self.mtls:
            return self._certificate(cert_pem)
        raise Unauthenticated("this call needs a credential: send authorization: Bearer TOKEN")

    async def _bearer(self, bearer: str) -> Principal:
        key = self.cache.key(bearer)
        principal = self.cache.get(key)
        if principal is not None:
            return principal
        if tokens.looks_like_token(bearer):
            verified = await tokens.verify(self.db, bearer)
            ttl = self.token_ttl
        elif self.jwt is not None:
            verified = await self.jwt.verify(bearer)
            ttl = max(JWT_TTL, self.token_ttl)
        else:
            raise Unauthenticated("malformed API token (JWTs are not accepted here)")
        self.cache.put(key, verified, ttl)
        return verified.principal

    def _certificate(self, pem: bytes) -> Principal:
        principal = self._certs.get(pem)
        if principal is None:
            principal = Principal(certificate_identity(pem), via="mtls")
            self._certs[pem] = principal
            while len(self._certs) > 1000:
                self._certs.popitem(last=False)
        return principal


def certificate_identity(pem: bytes) -> str:
    """The caller a client certificate names: its first URI subject alternative name, else
    its first DNS name, else its subject's common name.

    Raises:
        Unauthenticated: the certificate names nothing usable.
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated("the client certificate cannot be read") from None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        names: list[str] = []
    else:
        assert isinstance(san, x509.SubjectAlternativeName)
        names = [
            *san.get_values_for_type(x509.UniformResourceIdentifier),
            *san.get_values_for_type(x509.DNSName),
        ]
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    names = [n for n in names if n]
    if not names:
        raise Unauthenticated("the client certificate names no URI, DNS name or common name")
    return names[0]
