"""The principal of the call being served, set by the adapters' authentication and read
by the policy. A contextvar, like the request id: every task of a call sees its own."""

from __future__ import annotations

from contextvars import ContextVar

from trackd.server.domain.auth.principal import ANONYMOUS, Principal

# ANONYMOUS (an admin) when auth is off; the authenticated caller otherwise.
current_principal: ContextVar[Principal] = ContextVar("trackd_principal", default=ANONYMOUS)
