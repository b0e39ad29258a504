"""A recursive-descent parser for filters and order_by clauses, with errors that say where
and what was expected:

    metrics.acc > 0.9 AND (params.lr = '0.001' OR NOT tags.stage LIKE 'dev%')

Precedence, loosest first: OR, AND, NOT. Keywords are case-insensitive. A key with
characters other than letters, digits and `_ . : / -` is quoted with double quotes or
backticks (`metrics."val loss"`); string values take single or double quotes.

Parentheses and NOTs nest at most MAX_NESTING levels deep. The parser recurses once per
level (a run of NOTs is read in a loop), and so does the SQL compiler over the tree, whose
depth the limit bounds too (AND and OR chains are flat), so neither comes near Python's
recursion limit whatever the filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trackd.server.domain.search.ast import (
    And,
    Compare,
    Entity,
    Ident,
    Node,
    Not,
    Or,
    OrderKey,
)
from trackd.server.errors import InvalidArgument

# How deep parentheses and NOTs may nest in a filter, counted together: `((NOT a = 'x'))`
# is three levels. Deeper is INVALID_ARGUMENT naming the limit.
MAX_NESTING = 100

# Summaries of a metric series usable as `metrics.<key>.<summary>`.
METRIC_AGGREGATES = {
    "min": "min",
    "max": "max",
    "mean": "mean",
    "avg": "mean",
    "stddev": "stddev",
    "std": "stddev",
    "count": "count",
    "nan_count": "nan_count",
    "first_step": "first_step",
    "last_step": "last_step",
    "latest": "latest",
    "last": "latest",
    "latest_step": "latest_step",
    "latest_timestamp": "latest_timestamp",
}


@dataclass(frozen=True)
class Attribute:
    """A searchable attribute: its canonical name, kind ("string" or "number") and whether
    it may be missing (and so takes IS NULL)."""

    name: str
    kind: str
    nullable: bool = False


@dataclass(frozen=True)
class Vocabulary:
    """What one search accepts: entity prefixes and attributes."""

    prefixes: dict[str, Entity]
    attributes: dict[str, Attribute]
    dataset_fields: tuple[str, ...] = ()
    metric_aggregates: bool = True
    # Whether params carry a type, so that `params.lr < 0.01` compares INT and DOUBLE
    # params by value.
    typed_params: bool = False


_RUN_PREFIXES: dict[str, Entity] = {
    "metrics": "metric",
    "metric": "metric",
    "params": "param",
    "param": "param",
    "parameters": "param",
    "tags": "tag",
    "tag": "tag",
    "attributes": "attribute",
    "attribute": "attribute",
    "attr": "attribute",
    "run": "attribute",
    "datasets": "dataset",
    "dataset": "dataset",
}

RUNS = Vocabulary(
    prefixes=_RUN_PREFIXES,
    attributes={
        "run_id": Attribute("run_id", "string"),
        "run_name": Attribute("run_name", "string"),
        "status": Attribute("status", "string"),
        "user_id": Attribute("user_id", "string"),
        "owner": Attribute("user_id", "string"),
        "artifact_uri": Attribute("artifact_uri", "string"),
        "start_time": Attribute("start_time", "number"),
        "created": Attribute("start_time", "number"),
        "end_time": Attribute("end_time", "number", nullable=True),
        "last_seen_time": Attribute("last_seen_time", "number"),
        "description": Attribute("description", "string"),
        "external_url": Attribute("external_url", "string"),
        "source_type": Attribute("source_type", "string"),
        "source_id": Attribute("source_id", "string"),
        "duration": Attribute("duration", "number", nullable=True),
        "parent_run_id": Attribute("parent_run_id", "string", nullable=True),
        "deleted_time": Attribute("deleted_time", "number", nullable=True),
        "depth": Attribute("depth", "number"),
    },
    dataset_fields=("name", "digest", "context"),
    typed_params=True,
)

LOGGED_MODELS = Vocabulary(
    prefixes={
        "metrics": "metric",
        "metric": "metric",
        "params": "param",
        "param": "param",
        "parameters": "param",
        "tags": "tag",
        "tag": "tag",
        "attributes": "attribute",
        "attribute": "attribute",
        "attr": "attribute",
    },
    attributes={
        "name": Attribute("name", "string"),
        "model_id": Attribute("model_id", "string"),
        "model_type": Attribute("model_type", "string"),
        "status": Attribute("status", "string"),
        "source_run_id": Attribute("source_run_id", "string", nullable=True),
        "creation_timestamp": Attribute("creation_timestamp", "number"),
        "creation_time": Attribute("creation_timestamp", "number"),
        "last_updated_timestamp": Attribute("last_updated_timestamp", "number"),
        "last_update_time": Attribute("last_updated_timestamp", "number"),
        # MLflow's name (SearchLoggedModelsUtils.NUMERIC_ATTRIBUTES).
        "last_updated_time": Attribute("last_updated_timestamp", "number"),
    },
    metric_aggregates=False,
)

EXPERIMENTS = Vocabulary(
    prefixes={
        "tags": "tag",
        "tag": "tag",
        "attributes": "attribute",
        "attribute": "attribute",
        "attr": "attribute",
    },
    attributes={
        "experiment_id": Attribute("experiment_id", "number"),
        "name": Attribute("name", "string"),
        "creation_time": Attribute("creation_time", "number"),
        "last_update_time": Attribute("last_update_time", "number"),
    },
    metric_aggregates=False,
)

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.:/\-]*)
  | (?P<dotword>\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<sq>'(?:[^'\\]|\\.|'')*')
  | (?P<dq>"(?:[^"\\]|\\.|"")*")
  | (?P<bt>`(?:[^`]|``)*`)
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    """One lexical token: its kind, text and 1-based column."""

    kind: str
    text: str
    col: int
    # True when no white space separates this token from the previous one.
    glued: bool


def _fail(field_name: str, message: str) -> InvalidArgument:
    return InvalidArgument.for_field(field_name, message)


def tokenize(text: str, field_name: str = "filter") -> list[Token]:
    """Splits a filter into tokens; an unknown character or an unterminated quote fails
    with its column."""
    nul = text.find("\x00")
    if nul >= 0:
        raise _fail(field_name, f"unexpected NUL character at column {nul + 1}")
    tokens: list[Token] = []
    pos = 0
    glued = False
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            ch = text[pos]
            if ch in "'\"`":
                raise _fail(field_name, f"unterminated quote {ch} starting at column {pos + 1}")
            raise _fail(field_name, f"unexpected character {ch!r} at column {pos + 1}")
        kind = m.lastgroup or ""
        if kind == "ws":
            glued = False
        else:
            tokens.append(Token(kind, m.group(), pos + 1, glued))
            glued = True
        pos = m.end()
    return tokens


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1]
    if quote == "`":
        return body.replace("``", "`")
    body = body.replace(quote * 2, quote)
    return re.sub(r"\\(.)", lambda m: m.group(1) if m.group(1) in "'\"" else m.group(0), body)


class _Parser:
    def __init__(self, text: str, vocab: Vocabulary, field_name: str) -> None:
        self.text = text
        self.vocab = vocab
        self.field = field_name
        self.tokens = tokenize(text, field_name)
        self.i = 0
        self.depth = 0

    # -- token helpers ---------------------------------------------------------------------

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def keyword(self, *words: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "word" and tok.text.upper() in words

    def where(self) -> str:
        tok = self.peek()
        return f"at column {tok.col}" if tok else "at the end of the filter"

    def enter(self, tok: Token) -> None:
        """One level deeper (an opening parenthesis or a NOT); past MAX_NESTING fails."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _fail(
                self.field,
                f"nests parentheses and NOTs more than {MAX_NESTING} levels deep "
                f"({tok.text!r} at column {tok.col}); the limit is {MAX_NESTING}",
            )

    def error(self, expected: str, after: str | None = None) -> InvalidArgument:
        tok = self.peek()
        found = f", found {tok.text!r}" if tok else ""
        context = f" after {after!r}" if after else ""
        return _fail(self.field, f"expected {expected}{context} {self.where()}{found}")

    # -- grammar ---------------------------------------------------------------------------

    def parse_filter(self) -> Node | None:
        if not self.tokens:
            return None
        node = self.or_expr()
        if self.peek() is not None:
            raise self.error("AND, OR or the end of the filter")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            self.next()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.keyword("AND"):
            self.next()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> Node:
        nots = 0
        while self.keyword("NOT") and not self.keyword("IN", offset=1):
            self.enter(self.next())
            nots += 1
        node = self.primary()
        self.depth -= nots
        for _ in range(nots):
            node = Not(node)
        return node

    def primary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.error("a comparison")
        if tok.kind == "lparen":
            self.enter(self.next())
            node = self.or_expr()
            closing = self.peek()
            if closing is None or closing.kind != "rparen":
                raise self.error("')'")
            self.next()
            self.depth -= 1
            return node
        return self.comparison()

    def identifier(self) -> Ident:
        tok = self.peek()
        if tok is None or tok.kind not in ("word", "dq", "bt"):
            raise self.error("an identifier such as metrics.loss, params.lr or start_time")
        start = self.next()
        if start.kind != "word":
            raise _fail(
                self.field,
                f"a quoted key needs a prefix such as metrics. or tags. at column {start.col}",
            )
        text = start.text
        if "." not in text:
            if text.upper() in ("AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL"):
                raise _fail(
                    self.field,
                    f"expected an identifier at column {start.col}, found the keyword {text!r}",
                )
            return self.attribute(text, text, start.col)
        prefix, _, rest = text.partition(".")
        entity = self.vocab.prefixes.get(prefix.lower())
        if entity is None:
            known = ", ".join(sorted({p + "." for p in self.vocab.prefixes}))
            raise _fail(
                self.field,
                f"unknown prefix {prefix + '.'!r} at column {start.col}; use one of {known}",
            )
        aggregate: str | None = None
        if rest == "":
            # A quoted key must follow right away: metrics."my key" or tags.`a.b`.
            quoted = self.peek()
            if quoted is None or quoted.kind not in ("dq", "bt") or not quoted.glued:
                raise _fail(self.field, f"expected a key after {text!r} at column {start.col}")
            self.next()
            key = _unquote(quoted.text)
            text += quoted.text
            suffix = self.peek()
            if suffix is not None and suffix.kind == "dotword" and suffix.glued:
                self.next()
                aggregate = self.aggregate(entity, suffix.text[1:], suffix.col)
                text += suffix.text
        else:
            key = rest
            head, dot, last = rest.rpartition(".")
            # Where metrics have no summaries (logged models), a dotted key is the key itself.
            if (
                dot
                and entity == "metric"
                and self.vocab.metric_aggregates
                and last.lower() in METRIC_AGGREGATES
            ):
                key, aggregate = head, METRIC_AGGREGATES[last.lower()]
        if not key:
            raise _fail(self.field, f"empty key in {text!r} at column {start.col}")
        if entity == "attribute":
            return self.attribute(key, text, start.col)
        if entity == "dataset":
            if key.lower() not in self.vocab.dataset_fields:
                fields = ", ".join("datasets." + f for f in self.vocab.dataset_fields)
                raise _fail(
                    self.field,
                    f"unknown dataset field {key!r} at column {start.col}; use one of {fields}",
                )
            key = key.lower()
        return Ident(entity, key, aggregate, text)

    def aggregate(self, entity: Entity, name: str, col: int) -> str:
        if entity != "metric":
            raise _fail(self.field, f"only metrics have summaries (.{name} at column {col})")
        if not self.vocab.metric_aggregates:
            raise _fail(self.field, f"metric summaries are not searchable here (column {col})")
        agg = METRIC_AGGREGATES.get(name.lower())
        if agg is None:
            names = ", ".join(sorted(METRIC_AGGREGATES))
            raise _fail(
                self.field, f"unknown metric summary {name!r} at column {col}; use one of {names}"
            )
        return agg

    def attribute(self, name: str, text: str, col: int) -> Ident:
        attr = self.vocab.attributes.get(name.lower())
        if attr is None:
            known = ", ".join(sorted(self.vocab.attributes))
            raise _fail(
                self.field,
                f"unknown attribute {name!r} at column {col}; "
                f"use one of {known} or a prefix such as metrics.",
            )
        return Ident("attribute", attr.name, None, text)

    def canonical(self, ident: Ident) -> Attribute | None:
        for attr in self.vocab.attributes.values():
            if attr.name == ident.key:
                return attr
        return None

    def kind_of(self, ident: Ident) -> str:
        if ident.entity == "metric":
            return "number"
        if ident.entity == "attribute":
            attr = self.canonical(ident)
            if attr is not None:
                return attr.kind
        return "string"

    def comparison(self) -> Compare:
        ident = self.identifier()
        kind = self.kind_of(ident)
        label = str(ident)
        tok = self.peek()
        if tok is None:
            raise self.error("a comparator", after=label)
        if ident.entity == "attribute":
            attr = self.canonical(ident)
            nullable = attr is not None and attr.nullable
        else:
            nullable = ident.entity != "dataset"
        if self.keyword("IS"):
            self.next()
            negate = False
            if self.keyword("NOT"):
                self.next()
                negate = True
            if not self.keyword("NULL"):
                raise self.error("NULL", after=label + " IS" + (" NOT" if negate else ""))
            self.next()
            if not nullable:
                missing = sorted({a.name for a in self.vocab.attributes.values() if a.nullable})
                raise _fail(
                    self.field,
                    f"{label} cannot be NULL; IS NULL applies to metrics, "
                    f"params, tags and {', '.join(missing) or 'no attribute'} "
                    f"(column {tok.col})",
                )
            return Compare(ident, "IS_NOT_NULL" if negate else "IS_NULL", None)
        if self.keyword("NOT") and self.keyword("IN", offset=1):
            self.next()
            self.next()
            return self.in_list(ident, "NOT_IN", kind, tok.col)
        if self.keyword("IN"):
            self.next()
            return self.in_list(ident, "IN", kind, tok.col)
        if self.keyword("LIKE", "ILIKE"):
            op = self.next().text.upper()
            if kind != "string":
                raise _fail(
                    self.field, f"{op} applies to strings; {label} is numeric (column {tok.col})"
                )
            return Compare(ident, op, self.string_value(label + " " + op))
        if tok.kind != "op":
            raise self.error("a comparator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, IS)", after=label)
        self.next()
        op = {"<>": "!=", "==": "="}.get(tok.text, tok.text)
        if kind == "number":
            return Compare(ident, op, self.number_value(label + " " + op))
        value = self.peek()
        typed = ident.entity == "param" and self.vocab.typed_params
        if typed and value is not None and value.kind == "number":
            # A typed (INT or DOUBLE) param compares by value with a number.
            return Compare(ident, op, self.number_value(label + " " + op))
        if op not in ("=", "!="):
            hint = (
                f"; an INT or DOUBLE param compares by value with an unquoted number, "
                f"as in {label} {op} 0.01"
                if typed
                else ""
            )
            raise _fail(
                self.field,
                f"{op} does not apply to {label}, a string; use =, !=, "
                f"LIKE, ILIKE or IN (column {tok.col}){hint}",
            )
        return Compare(ident, op, self.string_value(label + " " + op))

    def number_value(self, after: str) -> float | int:
        tok = self.peek()
        if tok is None or tok.kind != "number":
            raise self.error("a number", after=after)
        self.next()
        text = tok.text
        if re.fullmatch(r"[-+]?\d{1,19}", text) and -(2**63) <= int(text) < 2**63:
            return int(text)
        # Beyond int64 a literal compares as a double (a huge one as +-Infinity).
        return float(text)

    def string_value(self, after: str) -> str:
        tok = self.peek()
        if tok is None or tok.kind not in ("sq", "dq"):
            raise self.error("a quoted string", after=after)
        self.next()
        return _unquote(tok.text)

    def in_list(self, ident: Ident, op: str, kind: str, col: int) -> Compare:
        if kind != "string":
            raise _fail(self.field, f"IN applies to strings; {ident} is numeric (column {col})")
        opening = self.peek()
        if opening is None or opening.kind != "lparen":
            raise self.error("'(' to open the IN list", after=f"{ident} IN")
        self.next()
        values: list[str] = [self.string_value("(")]
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "comma":
                self.next()
                values.append(self.string_value(","))
                continue
            if tok is not None and tok.kind == "rparen":
                self.next()
                break
            raise self.error("',' or ')' in the IN list")
        return Compare(ident, op, tuple(values))

    def parse_order_key(self) -> OrderKey:
        ident = self.identifier()
        descending = False
        if self.keyword("ASC", "DESC"):
            descending = self.next().text.upper() == "DESC"
        if self.peek() is not None:
            raise self.error("ASC, DESC or the end of the clause", after=str(ident))
        if ident.entity == "dataset":
            raise _fail(self.field, "runs cannot be ordered by datasets")
        return OrderKey(ident, descending)


def parse_filter(text: str, vocab: Vocabulary, field_name: str = "filter") -> Node | None:
    """Parses a filter; None for an empty one. InvalidArgument says where and what was
    expected."""
    return _Parser(text, vocab, field_name).parse_filter()


def parse_order_by(clauses: list[str], vocab: Vocabulary) -> list[OrderKey]:
    """Parses order_by clauses such as "metrics.acc DESC"; empty clauses are skipped."""
    keys = []
    for i, clause in enumerate(clauses):
        if clause.strip():
            keys.append(_Parser(clause, vocab, f"order_by[{i}]").parse_order_key())
    return keys
