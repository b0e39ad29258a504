"""How a client reaches a server that authenticates: a bearer token (an API token made by
`trackd token create`, or a JWT) sent as `authorization: Bearer ...` on every call, and
TLS (optionally with a client certificate, for mTLS).

The token is the `token` argument, else $TRACKD_TOKEN. TLS is the `tls` argument (True for
the system's roots, or a TlsConfig / a dict with `ca`, `cert`, `key` file paths), else it
is on when $TRACKD_TLS_CA, $TRACKD_TLS_CERT or $TRACKD_TLS_KEY is set.

Over TLS the token travels as gRPC call credentials; over a plaintext channel (loopback,
or behind a proxy that terminates TLS) gRPC refuses call credentials, so interceptors add
the same metadata. Either way the channel holds the credentials, so every stub over it,
the run logger's reconnecting streams included, sends them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

TOKEN_ENV = "TRACKD_TOKEN"
TLS_CA_ENV = "TRACKD_TLS_CA"
TLS_CERT_ENV = "TRACKD_TLS_CERT"
TLS_KEY_ENV = "TRACKD_TLS_KEY"


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings: PEM file paths. `ca` verifies the server (None: the system's roots);
    `cert` and `key` are the client certificate and key for mTLS (both or neither)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


TlsArg = bool | TlsConfig | Mapping[str, str | None] | None


def resolve_token(token: str | None) -> str | None:
    """The bearer token: the argument, else $TRACKD_TOKEN, else None."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or any(c in token for c in "\r\n")):
        raise ValueError("the token is empty or spans lines")
    return token.strip() if token else None


def resolve_tls(tls: TlsArg) -> TlsConfig | None:
    """The TLS settings of the `tls` argument (None: from the environment)."""
    if tls is None:
        env = {
            k: os.environ.get(v)
            for k, v in (("ca", TLS_CA_ENV), ("cert", TLS_CERT_ENV), ("key", TLS_KEY_ENV))
        }
        return TlsConfig(**env) if any(env.values()) else None
    if tls is False:
        return None
    if tls is True:
        return TlsConfig()
    if isinstance(tls, TlsConfig):
        return tls
    unknown = set(tls) - {"ca", "cert", "key"}
    if unknown:
        raise ValueError(f"tls takes ca, cert and key; not {', '.join(sorted(unknown))}")
    return TlsConfig(tls.get("ca"), tls.get("cert"), tls.get("key"))


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(tls: TlsConfig, token: str | None) -> grpc.ChannelCredentials:
    """TLS channel credentials, with the token as call credentials if there is one."""
    if bool(tls.cert) != bool(tls.key):
        raise ValueError("a TLS client certificate needs its key, and a key its certificate")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.key),
        certificate_chain=_read(tls.cert),
    )
    if token is None:
        return creds
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))


class _Bearer:
    """Adds `authorization: Bearer TOKEN` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}(authorization=***)"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._pair)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


if TYPE_CHECKING:  # generic in grpc-stubs, not at run time
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor


class _UnaryUnary(_Bearer, _UnaryUnaryBase):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Bearer, _UnaryStreamBase):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Bearer, _StreamUnaryBase):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Bearer, _StreamStreamBase):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """Interceptors sending the token on every kind of call of a plaintext channel."""
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token), _StreamStream(token)]


def open_channel(
    target: str,
    token: str | None,
    tls: TlsConfig | None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` sending `token` on every call, over TLS if `tls`,
    through `interceptors` (after the token's)."""
    if tls is not None:
        return grpc.aio.secure_channel(
            target,
            channel_credentials(tls, token),
            options=options,
            interceptors=list(interceptors) or None,
        )
    chain = [*(bearer_interceptors(token) if token else ()), *interceptors]
    return grpc.aio.insecure_channel(target, options=options, interceptors=chain or None)
