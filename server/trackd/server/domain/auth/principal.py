"""Who is calling (a Principal) and the levels a call can need. Authentication (in the
adapters) makes the Principal; the policy (domain/auth/policy.py) decides with it."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

# The workspace of existing data and of every experiment made with auth off.
DEFAULT_WORKSPACE = "default"
DEFAULT_WORKSPACE_ID = 1


class Level(enum.IntEnum):
    """What a principal may do with an experiment (and its runs, datasets and models).
    Workspace roles READ, EDIT and MANAGE give the same levels on every experiment of the
    workspace; per-experiment grants use Databricks' names CAN_READ, CAN_EDIT and
    CAN_MANAGE. The effective level is the highest that applies."""

    NONE = 0
    READ = 1  # CAN_READ: see it, its runs, metrics, datasets and models
    EDIT = 2  # CAN_EDIT: also write runs, params, tags, metrics, models
    MANAGE = 3  # CAN_MANAGE: also rename, delete, restore, change permissions

    @property
    def grant_name(self) -> str:
        """The per-experiment name of the level: CAN_READ, CAN_EDIT, CAN_MANAGE."""
        return f"CAN_{self.name}"


def user_subject(name: str) -> str:
    """The subject string of a principal in roles and grants."""
    return f"user:{name}"


def group_subject(name: str) -> str:
    """The subject string of a group in roles and grants."""
    return f"group:{name}"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        name: the principal's name (an API token's principal, a JWT's `sub`, a client
            certificate's identity); "" only for the anonymous principal of auth-off mode.
        groups: groups from the JWT's configured claim (empty for other authenticators).
        admin: holds every role in every workspace.
        via: how it was authenticated: "token", "jwt", "mtls" or "none" (auth off).
    """

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False
    via: str = "token"

    @functools.cached_property
    def subjects(self) -> tuple[str, ...]:
        """The subjects roles and grants may name for this principal (computed once: a
        principal is immutable, and this is read by every permission check)."""
        return (user_subject(self.name), *sorted(group_subject(g) for g in self.groups))

    @property
    def anonymous(self) -> bool:
        """Whether this is auth-off mode's caller (who may do everything)."""
        return self.via == "none"


# The caller when auth is off: an admin of every workspace, recorded as "anonymous".
ANONYMOUS = Principal("anonymous", admin=True, via="none")
