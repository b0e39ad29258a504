"""Rules for experiments: unique active names, lifecycle, tags and listing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from trackd.server.clock import now_ms
from trackd.server.domain import limits, paging, validation
from trackd.server.domain.auth import policy
from trackd.server.domain.auth.principal import (
    DEFAULT_WORKSPACE,
    Level,
    group_subject,
    user_subject,
)
from trackd.server.domain.search import parser
from trackd.server.domain.validation import Violations
from trackd.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    experiment_not_found,
)
from trackd.server.store import experiments as store
from trackd.server.store import permissions as permission_store
from trackd.server.store import runs as run_store
from trackd.server.store import search as search_store
from trackd.server.store.pool import Connection, Database

FILTER_MAX = limits.SEARCH_FILTER_MAX

VIEW_STAGES = {
    0: (store.ACTIVE,),
    1: (store.ACTIVE,),
    2: (store.DELETED,),
    3: (store.ACTIVE, store.DELETED),
}


class Experiments:
    """Experiment operations over a database."""

    def __init__(self, db: Database, artifact_root: str) -> None:
        self.db = db
        self.artifact_root = artifact_root.rstrip("/")

    async def create(
        self,
        name: str,
        artifact_location: str,
        tags: Sequence[tuple[str, str]],
        workspace: str = "",
    ) -> str:
        """Creates an experiment in a workspace ("" for "default"); returns its id. Its
        owner is the caller, who also gets CAN_MANAGE on it when auth is on.

        Raises InvalidArgument for a bad name, location, tag or workspace name, NotFound
        for an unknown workspace, and AlreadyExists when an active experiment of the
        workspace holds the name."""
        v = Violations()
        v.text("name", name, max_len=limits.EXPERIMENT_NAME_MAX, required=True)
        v.text("artifact_location", artifact_location, max_len=limits.ARTIFACT_LOCATION_MAX)
        v.text("workspace", workspace, max_len=limits.WORKSPACE_NAME_MAX)
        keys, values = _check_tags(v, "tags", tags)
        v.raise_if_any()
        workspace = workspace or DEFAULT_WORKSPACE
        principal = policy.caller()
        owner = "" if principal.anonymous else principal.name

        async def work(conn: Connection) -> int:
            wid = await permission_store.workspace_id(conn, workspace)
            if wid is None:
                raise NotFound(
                    f"no workspace is named {workspace!r}", metadata={"workspace": workspace}
                )
            try:
                async with conn.transaction():
                    eid = await store.insert(
                        conn, name, artifact_location, now_ms(), keys, values, wid, owner
                    )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(
                    f"experiment name {name!r} is held by an active experiment",
                    metadata={"name": name},
                ) from exc
            if not artifact_location:
                await store.set_location(conn, eid, f"{self.artifact_root}/{eid}")
            if owner:
                await permission_store.set_grants(
                    conn, eid, [user_subject(owner)], [Level.MANAGE], replace=False
                )
            return eid

        return str(await self.db.transact(work))

    async def get(self, experiment_id: str) -> asyncpg.Record:
        """The experiment with its tags; NotFound if there is none."""
        eid = validation.experiment_id(experiment_id)
        row = await self.db.read(lambda conn: store.get(conn, eid))
        if row is None:
            raise experiment_not_found(experiment_id)
        return row

    async def get_by_name(self, name: str) -> asyncpg.Record:
        """The experiment of that name, the active one first; NotFound if there is none."""
        v = Violations()
        v.text("experiment_name", name, max_len=limits.EXPERIMENT_NAME_MAX, required=True)
        v.raise_if_any()
        subjects = policy.subjects_if_limited()
        row = await self.db.read(lambda conn: store.get_by_name(conn, name, subjects))
        if row is None:
            raise NotFound(f"no experiment is named {name!r}", metadata={"name": name})
        return row

    async def search(
        self,
        filter_: str,
        order_by: Sequence[str],
        max_results: int,
        page_token: str,
        view_type: int,
    ) -> tuple[list[asyncpg.Record], str]:
        """One page of experiments and the token of the next page ('' on the last).

        The filter takes `name`, `experiment_id`, `creation_time`, `last_update_time` and
        `tags.<key>` with the operators of the search language, in at most FILTER_MAX
        characters as for runs; order_by the same attributes and tags. Raises
        InvalidArgument for a bad filter, order, size or token."""
        if view_type not in VIEW_STAGES:
            raise InvalidArgument.for_field("view_type", f"{view_type} is not a ViewType")
        if len(filter_) > FILTER_MAX:
            raise InvalidArgument.for_field(
                "filter", f"is {len(filter_)} characters long; the limit is {FILTER_MAX}"
            )
        node = parser.parse_filter(filter_, parser.EXPERIMENTS)
        order = parser.parse_order_by(list(order_by), parser.EXPERIMENTS)
        size = validation.page_size(
            max_results,
            default=limits.SEARCH_MAX_RESULTS_DEFAULT,
            maximum=limits.SEARCH_MAX_RESULTS_MAX,
        )
        stages = VIEW_STAGES[view_type]
        fingerprint = paging.query_fingerprint("experiments", filter_, list(order_by), stages)
        subjects = policy.subjects_if_limited()

        async def fetch(
            conn: Connection, after: list[Any] | None, limit: int
        ) -> tuple[list[asyncpg.Record], int]:
            return await search_store.search_experiments(
                conn, stages, node, order, after, limit, subjects
            )

        async def keep(conn: Connection, rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
            return rows

        return await paging.keyset_page(self.db, page_token, fingerprint, size, fetch, keep)

    async def rename(self, experiment_id: str, new_name: str) -> None:
        """Renames an experiment; AlreadyExists if an active experiment holds the name."""
        eid = validation.experiment_id(experiment_id)
        v = Violations()
        v.text("new_name", new_name, max_len=limits.EXPERIMENT_NAME_MAX, required=True)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            row = await _lock(conn, eid)
            if row["lifecycle_stage"] != store.ACTIVE:
                raise FailedPrecondition(
                    f"experiment {experiment_id} is deleted; restore it before renaming it",
                    metadata={"experiment_id": experiment_id},
                )
            try:
                async with conn.transaction():
                    await store.rename(conn, eid, new_name, now_ms())
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(
                    f"experiment name {new_name!r} is held by an active experiment",
                    metadata={"name": new_name},
                ) from exc

        await self.db.transact(work)

    async def delete(self, experiment_id: str) -> None:
        """Soft-deletes an experiment and its active runs."""
        eid = validation.experiment_id(experiment_id)
        if eid == 0:
            raise FailedPrecondition(
                "the Default experiment 0 cannot be deleted", metadata={"experiment_id": "0"}
            )

        async def work(conn: Connection) -> None:
            row = await _lock(conn, eid)
            if row["lifecycle_stage"] == store.DELETED:
                raise FailedPrecondition(
                    f"experiment {experiment_id} is already deleted",
                    metadata={"experiment_id": experiment_id},
                )
            now = now_ms()
            await store.set_stage(conn, eid, store.DELETED, now)
            await run_store.delete_with_experiment(conn, eid, now)

        await self.db.transact(work)

    async def restore(self, experiment_id: str) -> None:
        """Restores a deleted experiment and the runs deleted with it.

        FailedPrecondition when it is active, or when an active experiment holds its name."""
        eid = validation.experiment_id(experiment_id)

        async def work(conn: Connection) -> None:
            row = await _lock(conn, eid)
            if row["lifecycle_stage"] == store.ACTIVE:
                raise FailedPrecondition(
                    f"experiment {experiment_id} is not deleted",
                    metadata={"experiment_id": experiment_id},
                )
            try:
                async with conn.transaction():
                    await store.set_stage(conn, eid, store.ACTIVE, now_ms())
            except asyncpg.UniqueViolationError as exc:
                raise FailedPrecondition(
                    f"cannot restore experiment {experiment_id}: its name {row['name']!r} is "
                    "held by an active experiment; rename one of them first",
                    metadata={"experiment_id": experiment_id, "name": row["name"]},
                ) from exc
            await run_store.restore_with_experiment(conn, eid)

        await self.db.transact(work)

    async def set_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Creates or replaces a tag of an active experiment."""
        eid = validation.experiment_id(experiment_id)
        v = Violations()
        v.key("key", key, max_len=limits.EXPERIMENT_TAG_KEY_MAX)
        v.text("value", value, max_len=limits.EXPERIMENT_TAG_VALUE_MAX)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            await _lock_active(conn, eid, experiment_id)
            now = now_ms()
            await store.upsert_tags(conn, eid, [key], [value])
            await store.touch(conn, eid, now)

        await self.db.transact(work)

    async def delete_tag(self, experiment_id: str, key: str) -> None:
        """Deletes a tag of an active experiment; NotFound if it has no such tag."""
        eid = validation.experiment_id(experiment_id)
        v = Violations()
        v.text("key", key, max_len=limits.EXPERIMENT_TAG_KEY_MAX, required=True)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            await _lock_active(conn, eid, experiment_id)
            if not await store.delete_tag(conn, eid, key):
                raise NotFound(
                    f"experiment {experiment_id} has no tag {key!r}",
                    metadata={"experiment_id": experiment_id, "key": key},
                )
            await store.touch(conn, eid, now_ms())

        await self.db.transact(work)

    async def permission_levels(self, experiment_id: str) -> list[tuple[Level, str]]:
        """The levels a grant can give, with what each allows; NotFound for no such
        experiment."""
        await self.get(experiment_id)
        return list(LEVEL_DESCRIPTIONS.items())

    async def permissions(self, experiment_id: str) -> list[AccessEntry]:
        """Who holds which level on the experiment (grants, then workspace roles)."""
        eid = validation.experiment_id(experiment_id)

        async def work(conn: Connection) -> list[AccessEntry]:
            if await store.stage(conn, eid) is None:
                raise experiment_not_found(experiment_id)
            return await _access_list(conn, eid)

        return await self.db.read(work)

    async def set_permissions(
        self, experiment_id: str, grants: Sequence[tuple[str, str, int]], *, replace: bool
    ) -> list[AccessEntry]:
        """Grants levels on the experiment to principals and groups, given as (user_name,
        group_name, level) with exactly one name; with `replace`, every other grant goes
        (workspace roles stay). Returns who holds which level after the change.

        Raises InvalidArgument for a bad entry or a repeated subject, NotFound for no such
        experiment."""
        eid = validation.experiment_id(experiment_id)
        v = Violations()
        v.count("access_control_list", len(grants), max_count=limits.GRANTS_MAX)
        subjects: list[str] = []
        levels: list[int] = []
        for i, (user, group, level) in enumerate(grants):
            path = f"access_control_list[{i}]"
            if bool(user) == bool(group):
                v.add(path, "give exactly one of user_name and group_name")
                continue
            field, name = ("user_name", user) if user else ("group_name", group)
            if not v.text(f"{path}.{field}", name, max_len=limits.SUBJECT_NAME_MAX):
                continue
            if level not in (Level.READ, Level.EDIT, Level.MANAGE):
                v.add(
                    f"{path}.permission_level",
                    f"{level} is not CAN_READ, CAN_EDIT or CAN_MANAGE",
                )
                continue
            subject = user_subject(name) if user else group_subject(name)
            if subject in subjects:
                v.add(f"{path}.{field}", f"{name!r} is named twice")
                continue
            subjects.append(subject)
            levels.append(level)
        v.raise_if_any()

        async def work(conn: Connection) -> list[AccessEntry]:
            await _lock(conn, eid)
            await permission_store.set_grants(conn, eid, subjects, levels, replace=replace)
            return await _access_list(conn, eid)

        try:
            return await self.db.transact(work)
        finally:
            policy.levels_changed()

    async def set_default_location(self) -> None:
        """Gives the Default experiment an artifact location under the artifact root."""
        await self.db.transact(
            lambda conn: store.set_default_location(conn, f"{self.artifact_root}/0")
        )


# What each level allows, as GetExperimentPermissionLevels says.
LEVEL_DESCRIPTIONS = {
    Level.READ: "See the experiment, its runs, metrics, datasets and logged models.",
    Level.EDIT: "Also create and write runs and logged models, and set experiment tags.",
    Level.MANAGE: "Also rename, delete and restore the experiment and change its permissions.",
}


@dataclass(frozen=True)
class AccessEntry:
    """Every level one principal or group holds on an experiment: (level, inherited,
    inherited from) with the grant first."""

    user_name: str
    group_name: str
    levels: list[tuple[Level, bool, str]]


async def _access_list(conn: Connection, eid: int) -> list[AccessEntry]:
    """Who holds which level on the (existing) experiment: principals first, then groups,
    by name."""
    held: dict[str, list[tuple[Level, bool, str]]] = {}
    for g in await permission_store.grants(conn, eid):
        held.setdefault(g["subject"], []).append((Level(g["level"]), False, ""))
    for r in await permission_store.roles(conn, eid):
        held.setdefault(r["subject"], []).append(
            (Level(r["role"]), True, f"workspaces/{r['workspace']}")
        )
    entries = []
    for subject in sorted(held, key=lambda s: (not s.startswith("user:"), s)):
        kind, _, name = subject.partition(":")
        user, group = (name, "") if kind == "user" else ("", name)
        entries.append(AccessEntry(user, group, held[subject]))
    return entries


def _check_tags(
    v: Violations, field: str, tags: Sequence[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """Validates experiment tags; the last value of a repeated key wins."""
    v.count(field, len(tags), max_count=limits.EXPERIMENT_TAGS_MAX)
    merged: dict[str, str] = {}
    for i, (key, value) in enumerate(tags):
        ok = v.key(f"{field}[{i}].key", key, max_len=limits.EXPERIMENT_TAG_KEY_MAX)
        ok = v.text(f"{field}[{i}].value", value, max_len=limits.EXPERIMENT_TAG_VALUE_MAX) and ok
        if ok:
            merged[key] = value
    return list(merged), list(merged.values())


async def _lock(conn: Connection, eid: int) -> asyncpg.Record:
    row = await store.lock(conn, eid)
    if row is None:
        raise experiment_not_found(str(eid))
    return row


async def _lock_active(conn: Connection, eid: int, experiment_id: str) -> asyncpg.Record:
    row = await _lock(conn, eid)
    if row["lifecycle_stage"] != store.ACTIVE:
        raise FailedPrecondition(
            f"experiment {experiment_id} is deleted; restore it first",
            metadata={"experiment_id": experiment_id},
        )
    return row
