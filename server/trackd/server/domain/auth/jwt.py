"""OIDC / JWT bearer tokens, verified with PyJWT against the issuer's JWKS: signature (an
asymmetric algorithm only, the one the key declares), `exp`, `iss` and `aud`. The principal
is `sub`; its groups come from a configured claim."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import jwt

from trackd.server.domain.auth.principal import Principal
from trackd.server.domain.auth.tokens import Verified
from trackd.server.errors import Unauthenticated, Unavailable

# Only public-key algorithms: an HMAC "key" from a JWKS would let anyone who read the JWKS
# sign tokens, and "none" signs nothing.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Seconds of clock difference with the issuer tolerated on `exp`, `nbf` and `iat`.
LEEWAY = 30.0
# Seconds the JWKS is kept before it is fetched again (an unknown `kid` refetches sooner,
# at most every COOLDOWN seconds).
JWKS_LIFESPAN = 300.0
COOLDOWN = 30.0

# Each PyJWT failure as a fixed message: PyJWT's own text can quote parts of the token.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the JWT expired"),
    (jwt.InvalidAudienceError, "the JWT is not for this audience"),
    (jwt.InvalidIssuerError, "the JWT is not from the configured issuer"),
    (jwt.ImmatureSignatureError, "the JWT is not valid yet"),
    (jwt.MissingRequiredClaimError, "the JWT lacks a required claim (exp, iss, aud, sub)"),
    (jwt.InvalidSignatureError, "the JWT's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the JWT's algorithm is not the key's"),
    (jwt.DecodeError, "malformed JWT"),
)


class JwtVerifier:
    """Verifies JWTs of one issuer and audience.

    Args:
        issuer: the required `iss`.
        jwks_url: where the issuer publishes its keys.
        audience: the required `aud` (one of them, if the token lists several).
        groups_claim: the claim holding the caller's groups (a list of strings, or one).
        admin_group: members of this group are admins ("" for none).
    """

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        audience: str,
        groups_claim: str = "groups",
        admin_group: str = "",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.groups_claim = groups_claim
        self.admin_group = admin_group
        self.jwks = jwt.PyJWKClient(
            jwks_url,
            cache_keys=True,
            lifespan=JWKS_LIFESPAN,
            timeout=5,
            cooldown_duration=COOLDOWN,
        )

    async def verify(self, token: str) -> Verified:
        """The principal of `token`, valid until its `exp`.

        Raises:
            Unauthenticated: malformed, expired, wrong issuer or audience, bad signature,
                unknown key.
            Unavailable: the JWKS could not be fetched.
        """
        # The JWKS fetch (rarely) and the signature check are blocking: off the loop.
        return await asyncio.to_thread(self._verify, token)

    def _verify(self, token: str) -> Verified:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise Unavailable("cannot fetch the JWT issuer's keys (JWKS); retry") from None
        except (jwt.PyJWKClientError, jwt.PyJWKError):
            raise Unauthenticated("the JWT names no key of the issuer's JWKS") from None
        except jwt.InvalidTokenError:  # DecodeError, or a bad header (a `kid` not a string)
            raise Unauthenticated("malformed JWT") from None
        if key.algorithm_name not in ALGORITHMS:
            raise Unauthenticated("the issuer's key is not a public-key algorithm's")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            for kind, message in _MESSAGES:
                if isinstance(exc, kind):
                    raise Unauthenticated(message) from None
            raise Unauthenticated("invalid JWT") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("the JWT's sub is not a name")
        groups = frozenset(_strings(claims.get(self.groups_claim)))
        admin = bool(self.admin_group) and self.admin_group in groups
        expires = int(float(claims["exp"]) * 1000)
        return Verified(Principal(sub, groups=groups, admin=admin, via="jwt"), expires)


def _strings(value: object) -> Iterable[str]:
    """The group names in a claim's value: a list of strings, or one string."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return (v for v in value if isinstance(v, str) and v)
    return ()
