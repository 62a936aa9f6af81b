"""ServiceNow encoded queries (``sysparm_query``), the subset the product uses.

Supported (SERVICENOW.md §4): conditions ``field=value`` joined by ``^`` (AND), ``^^`` as a
literal caret inside a value, and the orderings ``ORDERBYfield`` / ``ORDERBYDESCfield``.
Everything else (``^OR``, ``^NQ``, ``!=``, ``LIKE``, ``IN``, ``>``, dot-walking, ...) is
refused with :class:`QueryError`, so a client that starts to depend on more than the
contract fails loudly here instead of silently matching too much. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Condition", "EncodedQuery", "Ordering", "QueryError", "parse", "run"]

_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_LITERAL_CARET = "\x00"


class QueryError(ValueError):
    """The encoded query uses syntax the simulator does not implement, or is malformed."""


@dataclass(frozen=True)
class Condition:
    field: str
    value: str


@dataclass(frozen=True)
class Ordering:
    field: str
    descending: bool


@dataclass(frozen=True)
class EncodedQuery:
    conditions: tuple[Condition, ...] = ()
    order: tuple[Ordering, ...] = ()


def _term(term: str) -> Condition | Ordering:
    for prefix, descending in (("ORDERBYDESC", True), ("ORDERBY", False)):
        if term.startswith(prefix):
            field = term[len(prefix) :]
            if not _FIELD.fullmatch(field):
                raise QueryError(f"{term!r}: {prefix} needs a field name")
            return Ordering(field, descending)
    match = _FIELD.match(term)
    if match is None:
        # ServiceNow's field names are lower case, so an upper-case start is a keyword:
        # OR..., NQ, EQ, GROUPBY...
        raise QueryError(
            f"{term!r}: not supported by the simulator (only field=value, ^, "
            "ORDERBY and ORDERBYDESC)"
        )
    field, rest = match.group(), term[match.end() :]
    if not rest.startswith("=") or rest.startswith("=="):
        operator = rest[:12] or "(none)"
        raise QueryError(
            f"{term!r}: operator {operator!r} is not supported by the simulator (only '=')"
        )
    return Condition(field, rest[1:].replace(_LITERAL_CARET, "^"))


def parse(text: str) -> EncodedQuery:
    """Parse an encoded query; an empty string matches every record."""
    if _LITERAL_CARET in text:
        raise QueryError("the query contains a NUL character")
    conditions: list[Condition] = []
    order: list[Ordering] = []
    for raw in text.replace("^^", _LITERAL_CARET).split("^"):
        if not raw:
            continue  # a leading, trailing or doubled separator adds nothing
        parsed = _term(raw)
        if isinstance(parsed, Condition):
            conditions.append(parsed)
        else:
            order.append(parsed)
    return EncodedQuery(tuple(conditions), tuple(order))


def _value_of(field: str) -> Callable[[Mapping[str, str]], str]:
    return lambda record: record.get(field, "")


def run(
    query: EncodedQuery, records: Iterable[Mapping[str, str]], fields: Iterable[str]
) -> list[Mapping[str, str]]:
    """The records matching every condition, in the query's order (insertion order when it
    names none). A condition on a field the table does not have matches nothing, as on an
    instance with ``glide.invalid_query.returns_no_rows`` set (SERVICENOW.md §4)."""
    known = set(fields)
    if any(condition.field not in known for condition in query.conditions):
        return []
    matching = [
        record
        for record in records
        if all(record.get(c.field, "") == c.value for c in query.conditions)
    ]
    for ordering in reversed(query.order):  # stable sorts: the first ordering wins
        matching.sort(key=_value_of(ordering.field), reverse=ordering.descending)
    return matching
