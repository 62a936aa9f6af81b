"""How records are shown (SERVICENOW.md §3): the Table API's ``sysparm_display_value`` and
``sysparm_exclude_reference_link`` and ``sysparm_fields``, and the Change Management API's
value/display_value pairs. Pure functions of a record and a lookup of referenced records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from testbed.servicenow.store import TABLES

__all__ = ["DisplayMode", "display_value", "table_record", "wrapped_record"]

DisplayMode = Literal["false", "true", "all"]
# (table, sys_id) -> the referenced record, or None if it does not exist
Lookup = Callable[[str, str], Mapping[str, str] | None]


def display_value(table: str, field: str, value: str, lookup: Lookup) -> str:
    spec = TABLES[table]
    if field in spec.choices:
        return spec.choices[field].get(value, value)
    if field in spec.references and value:
        target_table = spec.references[field]
        target = lookup(target_table, value)
        return "" if target is None else target.get(TABLES[target_table].display_field, "")
    return value


def _selected(record: Mapping[str, str], fields: list[str] | None) -> list[str]:
    if not fields:
        return list(record)
    return [f for f in fields if f in record]


def table_record(
    table: str,
    record: Mapping[str, str],
    *,
    lookup: Lookup,
    base_url: str,
    display: DisplayMode = "false",
    exclude_reference_link: bool = False,
    fields: list[str] | None = None,
) -> dict[str, Any]:
    """One record as the Table API returns it."""
    spec = TABLES[table]
    shown: dict[str, Any] = {}
    for field in _selected(record, fields):
        value = record[field]
        shown_value = display_value(table, field, value, lookup)
        link = field in spec.references and value and not exclude_reference_link
        target = f"{base_url}/api/now/table/{spec.references.get(field, '')}/{value}"
        if display == "all":
            entry: dict[str, str] = {"display_value": shown_value, "value": value}
            shown[field] = {**entry, "link": target} if link else entry
        elif link:
            shown[field] = {"link": target, "value": shown_value if display == "true" else value}
        else:
            shown[field] = shown_value if display == "true" else value
    return shown


def wrapped_record(
    table: str, record: Mapping[str, str], *, lookup: Lookup, fields: list[str] | None = None
) -> dict[str, Any]:
    """One record as the Change Management API returns it: every field a pair."""
    return {
        field: {
            "value": record[field],
            "display_value": display_value(table, field, record[field], lookup),
        }
        for field in _selected(record, fields)
    }
