"""The policy per call: for every RPC, what it acts on and the level it needs; and the
Authorizer that decides with the caller's Principal.

Every RPC of every service is declared in POLICY (a test derives the RPC list from the
service descriptors, and the server refuses to register an undeclared one). A resource the
caller may not see (level NONE) answers NOT_FOUND exactly as a missing one does; a visible
one with too low a level answers PERMISSION_DENIED naming the level needed. Admins (and
the anonymous caller of auth-off mode) pass every check without a query.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from trackd.server.domain import validation
from trackd.server.domain.auth.context import current_principal
from trackd.server.domain.auth.principal import DEFAULT_WORKSPACE, Level, Principal
from trackd.server.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    experiment_not_found,
    model_not_found,
    run_not_found,
)
from trackd.server.store import permissions as store
from trackd.server.store.pool import Connection, Database

# What a call acts on.
EXPERIMENT = "experiment"  # the experiment named by the field
RUN = "run"  # the run named by the field, through its experiment
MODEL = "model"  # the logged model named by the field, through its experiment
WORKSPACE = "workspace"  # the workspace named by the field ("" for "default")
SEARCH = "search"  # what it returns is filtered to the caller's experiments in the SQL
STREAM = "stream"  # each run of each chunk is checked (once per stream)
OWNER = "owner"  # the run or logged model of the request's `owner` oneof
RUNS = "runs"  # every run of the request's `run_ids`
TARGET = "target"  # the run or experiment of the request's `target` oneof


@dataclass(frozen=True)
class Rule:
    """What one RPC acts on, through which request field, and the level it needs."""

    resource: str
    level: Level
    field: str = ""
    # The id an empty field stands for (CreateRun's experiment "0").
    default: str = ""

    @property
    def writes(self) -> bool:
        """Whether the call changes something (and so is audited)."""
        return self.level >= Level.EDIT


_R, _E, _M = Level.READ, Level.EDIT, Level.MANAGE

POLICY: dict[str, Rule] = {
    # ExperimentService
    "trackd.v1.ExperimentService.CreateExperiment": Rule(WORKSPACE, _E, "workspace"),
    "trackd.v1.ExperimentService.GetExperiment": Rule(EXPERIMENT, _R, "experiment_id"),
    "trackd.v1.ExperimentService.GetExperimentByName": Rule(SEARCH, _R),
    "trackd.v1.ExperimentService.SearchExperiments": Rule(SEARCH, _R),
    "trackd.v1.ExperimentService.UpdateExperiment": Rule(EXPERIMENT, _M, "experiment_id"),
    "trackd.v1.ExperimentService.DeleteExperiment": Rule(EXPERIMENT, _M, "experiment_id"),
    "trackd.v1.ExperimentService.RestoreExperiment": Rule(EXPERIMENT, _M, "experiment_id"),
    "trackd.v1.ExperimentService.SetExperimentTag": Rule(EXPERIMENT, _E, "experiment_id"),
    "trackd.v1.ExperimentService.DeleteExperimentTag": Rule(EXPERIMENT, _E, "experiment_id"),
    "trackd.v1.ExperimentService.SearchDatasets": Rule(SEARCH, _R),
    "trackd.v1.ExperimentService.GetExperimentPermissionLevels": Rule(
        EXPERIMENT, _R, "experiment_id"
    ),
    "trackd.v1.ExperimentService.GetExperimentPermissions": Rule(EXPERIMENT, _M, "experiment_id"),
    "trackd.v1.ExperimentService.SetExperimentPermissions": Rule(EXPERIMENT, _M, "experiment_id"),
    "trackd.v1.ExperimentService.UpdateExperimentPermissions": Rule(
        EXPERIMENT, _M, "experiment_id"
    ),
    # RunService
    "trackd.v1.RunService.CreateRun": Rule(EXPERIMENT, _E, "experiment_id", "0"),
    "trackd.v1.RunService.GetRun": Rule(RUN, _R, "run_id"),
    "trackd.v1.RunService.UpdateRun": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.DeleteRun": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.RestoreRun": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.DeleteRuns": Rule(EXPERIMENT, _E, "experiment_id"),
    "trackd.v1.RunService.RestoreRuns": Rule(EXPERIMENT, _E, "experiment_id"),
    "trackd.v1.RunService.LogMetric": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.LogParam": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.SetTag": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.DeleteTag": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.LogBatch": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.GetMetricHistory": Rule(RUN, _R, "run_id"),
    "trackd.v1.RunService.SearchRuns": Rule(SEARCH, _R),
    "trackd.v1.RunService.ListChildRuns": Rule(RUN, _R, "run_id"),
    "trackd.v1.RunService.StreamMetrics": Rule(STREAM, _E),
    "trackd.v1.RunService.StreamMetricHistory": Rule(RUN, _R, "run_id"),
    "trackd.v1.RunService.LogInputs": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.LogOutputs": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.Heartbeat": Rule(RUN, _E, "run_id"),
    "trackd.v1.RunService.StreamMetricEnvelopes": Rule(RUNS, _R, "run_ids"),
    "trackd.v1.RunService.WatchRun": Rule(TARGET, _R, "target"),
    # LoggedModelService
    "trackd.v1.LoggedModelService.CreateLoggedModel": Rule(EXPERIMENT, _E, "experiment_id", "0"),
    "trackd.v1.LoggedModelService.GetLoggedModel": Rule(MODEL, _R, "model_id"),
    "trackd.v1.LoggedModelService.FinalizeLoggedModel": Rule(MODEL, _E, "model_id"),
    "trackd.v1.LoggedModelService.DeleteLoggedModel": Rule(MODEL, _E, "model_id"),
    "trackd.v1.LoggedModelService.SetLoggedModelTags": Rule(MODEL, _E, "model_id"),
    "trackd.v1.LoggedModelService.DeleteLoggedModelTag": Rule(MODEL, _E, "model_id"),
    "trackd.v1.LoggedModelService.LogLoggedModelParams": Rule(MODEL, _E, "model_id"),
    "trackd.v1.LoggedModelService.SearchLoggedModels": Rule(SEARCH, _R),
    # ArtifactService: an upload is checked on its first message (UploadStart).
    "trackd.v1.ArtifactService.UploadArtifact": Rule(OWNER, _E, "owner"),
    "trackd.v1.ArtifactService.DownloadArtifact": Rule(OWNER, _R, "owner"),
    "trackd.v1.ArtifactService.ListArtifacts": Rule(OWNER, _R, "owner"),
    "trackd.v1.ArtifactService.GetArtifact": Rule(OWNER, _R, "owner"),
    "trackd.v1.ArtifactService.DeleteArtifact": Rule(OWNER, _E, "owner"),
}


# The routes of the HTTP front that mirror no RPC, by name (http/mlflow_api.py); a route
# that mirrors an RPC is checked against that RPC's rule.
HTTP_POLICY: dict[str, Rule] = {
    "http.GetMetricHistoryBulkInterval": Rule(RUNS, _R, "run_ids"),
}


def http_rule(name: str) -> Rule | None:
    """The rule of an HTTP route: its RPC's, or its own in HTTP_POLICY; None for "" (a
    public route: health, version, server info). KeyError for an undeclared one."""
    return _rule(name) if name else None


def _rule(method: str) -> Rule:
    return POLICY[method] if method in POLICY else HTTP_POLICY[method]


def rule(method: str) -> Rule:
    """The rule of a method by its full name ("trackd.v1.RunService.GetRun"); KeyError
    for an undeclared method, so that no RPC is served without a declared permission."""
    return POLICY[method]


def caller() -> Principal:
    """The principal of the call being served."""
    return current_principal.get()


def subjects_if_limited() -> tuple[str, ...] | None:
    """The caller's subjects when its view is limited by roles and grants; None for an
    admin (and the anonymous caller of auth-off mode), who sees everything."""
    p = current_principal.get()
    return None if p.admin else p.subjects


async def visible_among(conn: Connection, experiment_ids: list[int]) -> list[int]:
    """The requested experiments the caller may see (all of them for an admin); the others
    simply match nothing, as missing ones do. Runs in the search's own snapshot."""
    subjects = subjects_if_limited()
    if subjects is None or not experiment_ids:
        return experiment_ids
    return await store.visible_among(conn, experiment_ids, subjects)


async def hidden(conn: Connection, experiment_id: int) -> bool:
    """Whether the caller may not see the experiment (that a request refers to through
    another resource, such as a parent run): such a reference is then answered as if it
    named nothing."""
    return not await visible_among(conn, [experiment_id])


def denied(resource: str, ident: str, needed: Level, held: Level) -> PermissionDenied:
    """The PERMISSION_DENIED of a visible resource whose level is too low."""
    return PermissionDenied(
        f"{resource} {ident} needs {needed.grant_name}; you hold {held.grant_name}",
        metadata={
            f"{resource}_id" if resource != WORKSPACE else resource: ident,
            "level_needed": needed.grant_name,
        },
    )


# How long a principal's level on an experiment is reused (seconds): a role or grant
# changed by another server or by `trackd role` takes effect within this time; changes
# made through this server's permission RPCs take effect at once.
LEVEL_TTL = 1.0
_CACHE_MAX = 50_000
# Bumped by every permission change made here: cached levels older than it are stale.
_generation = [0]


def levels_changed() -> None:
    """Forgets every cached level (after a permission change)."""
    _generation[0] += 1


class Authorizer:
    """Decides calls with the current principal: one query per (principal, resource) a
    second at most; runs' and logged models' experiments never change, so they are
    remembered for good (bounded)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # (subjects, resource, id) -> (experiment id or None, level, generation, expiry)
        self._levels: OrderedDict[tuple[tuple[str, ...], str, str], tuple[Any, ...]] = OrderedDict()

    async def check(self, method: str, request: Any) -> None:
        """Refuses the call unless the caller holds the level `method` needs on what the
        request names. NotFound when it may not see it, PermissionDenied when its level is
        too low; a malformed or missing id is left to the domain (INVALID_ARGUMENT or
        NOT_FOUND as without auth)."""
        principal = current_principal.get()
        if principal.admin:
            return
        r = _rule(method)
        if r.resource in (SEARCH, STREAM):
            return
        if r.resource == OWNER:
            resource, ident = owner_of(request)
            if ident:
                await self.require(resource, ident, r.level)
            return
        if r.resource == RUNS:
            for run_id in dict.fromkeys(request.run_ids):
                await self.require(RUN, run_id, r.level)
            return
        if r.resource == TARGET:
            which = request.WhichOneof("target")
            if which:
                kind = RUN if which == "run_id" else EXPERIMENT
                await self.require(kind, getattr(request, which), r.level)
            return
        ident = getattr(request, r.field) or r.default
        if r.resource == WORKSPACE:
            await self.workspace(ident, r.level)
            return
        await self.require(r.resource, ident, r.level)

    async def require(self, resource: str, ident: str, needed: Level) -> int | None:
        """Checks the caller's level on an experiment, run or logged model (by its id as
        the request gives it); returns the experiment's id, or None when the id is
        malformed or names nothing (the domain then answers as usual)."""
        principal = current_principal.get()
        if principal.admin:
            return None
        found = await self.level(principal.subjects, resource, ident)
        if found is None:
            return None
        experiment_id, level = found
        if level == Level.NONE:
            if resource == RUN:
                raise run_not_found(ident)
            if resource == MODEL:
                raise model_not_found(ident)
            raise experiment_not_found(ident)
        if level < needed:
            raise denied(resource, ident, needed, level)
        return int(experiment_id)

    async def level(
        self, subjects: tuple[str, ...], resource: str, ident: str
    ) -> tuple[int, Level] | None:
        """(experiment id, level of the subjects) for a resource; None if it is
        malformed or missing."""
        key = (subjects, resource, ident)
        now = time.monotonic()
        hit = self._levels.get(key)
        if hit is not None and hit[2] == _generation[0] and hit[3] > now:
            return None if hit[0] is None else (hit[0], hit[1])
        generation = _generation[0]
        row = await self._fetch(subjects, resource, ident)
        if row is None:
            return None  # missing ones are not cached: they may be created any time
        found = (row["experiment_id"], Level(row["level"]))
        self._levels[key] = (found[0], found[1], generation, now + LEVEL_TTL)
        self._levels.move_to_end(key)
        while len(self._levels) > _CACHE_MAX:
            self._levels.popitem(last=False)
        return found

    async def _fetch(self, subjects: tuple[str, ...], resource: str, ident: str) -> Any:
        try:
            if resource == RUN:
                run_id = validation.run_id(ident)
                return await self.db.read(lambda c: store.run_level(c, run_id, subjects))
            if resource == MODEL:
                if not validation.is_model_id(ident):
                    return None
                return await self.db.read(lambda c: store.model_level(c, ident, subjects))
            eid = validation.experiment_id(ident)
        except InvalidArgument:
            return None
        return await self.db.read(lambda c: store.experiment_level(c, eid, subjects))

    async def workspace(self, name: str, needed: Level) -> int:
        """The id of the workspace of that name ("" for "default") after checking the
        caller's role in it: NotFound for an unknown workspace or one where it holds no
        role, PermissionDenied below `needed`."""
        name = name or DEFAULT_WORKSPACE
        principal = current_principal.get()

        async def work(conn: Connection) -> tuple[int | None, int]:
            wid = await store.workspace_id(conn, name)
            if wid is None or principal.admin:
                return wid, Level.MANAGE
            return wid, await store.workspace_level(conn, wid, principal.subjects)

        wid, held = await self.db.read(work)
        if wid is None or held == Level.NONE:
            raise NotFound(f"no workspace is named {name!r}", metadata={"workspace": name})
        if held < needed:
            raise denied(WORKSPACE, name, needed, Level(held))
        return wid


def owner_of(request: Any) -> tuple[str, str]:
    """(RUN or MODEL, id) of the owner a request names through its `owner` oneof; ("", "")
    when it names none."""
    which = request.WhichOneof("owner")
    if which == "run_id":
        return RUN, str(request.run_id)
    if which == "model_id":
        return MODEL, str(request.model_id)
    return "", ""


def audit_resource(method: str, request: Any) -> str:
    """What an audited call acted on, as "run:<id>", "experiment:<id>", ...."""
    r = _rule(method)
    if not r.field:
        return r.resource
    if r.resource == OWNER:
        resource, ident = owner_of(request)
        return f"{resource or 'owner'}:{ident[:100]}"
    if r.resource in (RUNS, TARGET):
        return r.resource
    value = getattr(request, r.field, "")
    if r.resource == WORKSPACE:
        value = value or DEFAULT_WORKSPACE
    return f"{r.resource}:{str(value)[:100]}"


class Gate:
    """What every call of a service passes: the check of POLICY before it and, for a
    write by an authenticated caller, an audit record after it."""

    def __init__(self, db: Database) -> None:
        from trackd.server.domain.auth.audit import AuditTrail

        self.authorizer = Authorizer(db)
        self.audit = AuditTrail(db)
        # The service's full name ("trackd.v1.RunService"), set when it is registered.
        self.service = ""

    async def before(self, method: str, request: Any) -> None:
        """Checks the call (see Authorizer.check); `request` None for a stream of them."""
        if request is not None:
            await self.authorizer.check(method, request)

    def after(self, method: str, request: Any, outcome: str, request_id: str) -> None:
        """Records a write (one record per call, one per stream) by an authenticated
        caller, whatever its outcome."""
        principal = current_principal.get()
        if principal.anonymous or not _rule(method).writes:
            return
        resource = audit_resource(method, request) if request is not None else "stream"
        self.audit.record(principal.name, method, resource, outcome, request_id)
