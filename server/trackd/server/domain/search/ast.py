"""The parsed form of filters and order_by clauses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Entity = Literal["metric", "param", "tag", "attribute", "dataset"]
Value = str | float | int | tuple[str, ...] | None


@dataclass(frozen=True)
class Ident:
    """A filterable or sortable thing: `metrics.loss`, `metrics.loss.min`, `params.lr`,
    `tags."a b"`, `attributes.start_time`, `datasets.name`."""

    entity: Entity
    key: str
    # For metrics: a summary (min, max, mean, ...); None means the latest value.
    aggregate: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.entity}.{self.key}"


@dataclass(frozen=True)
class Compare:
    """`ident op value`. op is one of = != < <= > >= LIKE ILIKE IN NOT_IN IS_NULL
    IS_NOT_NULL; value is a number, a string, a tuple of strings (IN) or None (IS)."""

    ident: Ident
    op: str
    value: Value


@dataclass(frozen=True)
class And:
    """All of the parts hold."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """One of the parts holds."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The part does not hold."""

    part: Node


Node = Compare | And | Or | Not


@dataclass(frozen=True)
class OrderKey:
    """One order_by clause."""

    ident: Ident
    descending: bool
