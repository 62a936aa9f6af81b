"""Label selectors written the way ``kubectl -l`` takes them, turned into the
``matchLabels`` / ``matchExpressions`` object the API stores. PURE: no I/O.

Requirements are separated by commas and must all hold:

=======================  ==========================================================
``key=value``            the label is ``value`` (also ``key==value``) → ``matchLabels``
``key!=value``           the label is not ``value``, or is absent → ``NotIn``
``key in (a,b)``         the label is one of the values → ``In``
``key notin (a,b)``      the label is none of the values, or is absent → ``NotIn``
``key``                  the label is present → ``Exists``
``!key``                 the label is absent → ``DoesNotExist``
=======================  ==========================================================

Keys and values are checked against the rules the apiserver applies to labels, so a
selector it would refuse is refused here first, with the requirement that is wrong.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["check_label_key", "check_label_value", "parse_label_selector"]

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SET = re.compile(r"(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_COMPARE = re.compile(r"(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)")
_PRESENCE = re.compile(r"(?P<bang>!?)\s*(?P<key>[^\s!=(),]+)")


def check_label_key(key: str) -> None:
    """A label key: an optional DNS subdomain prefix and ``/``, then a name of at most 63
    characters (letters, digits, ``-``, ``_``, ``.``; starting and ending alphanumeric)."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        raise ValueError(f"label key {key!r} has an empty prefix before '/'")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(
            f"label key {key!r}: the prefix {prefix!r} must be a DNS subdomain "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: the name {name!r} must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )


def check_label_value(key: str, value: str) -> None:
    """A label value: empty, or at most 63 characters like a key's name."""
    if value and (len(value) > 63 or not _NAME.fullmatch(value)):
        raise ValueError(
            f"label {key!r}: the value {value!r} must be empty or 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )


def _requirements(text: str) -> list[str]:
    """Split at the commas outside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested '(' in label selector {text!r}")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unmatched ')' in label selector {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unclosed '(' in label selector {text!r}")
    parts.append(text[start:])
    return [part.strip() for part in parts]


def parse_label_selector(text: str) -> dict[str, Any]:
    """The selector object for ``text`` (see the module's table); ValueError says which
    requirement is wrong and why."""
    if not text.strip():
        raise ValueError("the label selector is empty")
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    for requirement in _requirements(text):
        if not requirement:
            raise ValueError(f"label selector {text!r} has an empty requirement (stray comma?)")
        if found := _SET.fullmatch(requirement):
            key = found["key"]
            check_label_key(key)
            values = [value.strip() for value in found["values"].split(",")]
            if values == [""]:
                raise ValueError(f"{requirement!r}: give at least one value in the parentheses")
            for value in values:
                check_label_value(key, value)
            operator = "In" if found["op"] == "in" else "NotIn"
            expressions.append({"key": key, "operator": operator, "values": values})
        elif found := _COMPARE.fullmatch(requirement):
            key, value = found["key"], found["value"]
            check_label_key(key)
            check_label_value(key, value)
            if found["op"] == "!=":
                expressions.append({"key": key, "operator": "NotIn", "values": [value]})
            elif match_labels.get(key, value) != value:
                raise ValueError(
                    f"label {key!r} is required to equal both {match_labels[key]!r} and "
                    f"{value!r}: no namespace can match"
                )
            else:
                match_labels[key] = value
        elif found := _PRESENCE.fullmatch(requirement):
            key = found["key"]
            check_label_key(key)
            operator = "DoesNotExist" if found["bang"] else "Exists"
            expressions.append({"key": key, "operator": operator})
        else:
            raise ValueError(
                f"cannot read {requirement!r}: use key=value, key!=value, key in (a,b), "
                "key notin (a,b), key or !key"
            )
    selector: dict[str, Any] = {}
    if match_labels:
        selector["matchLabels"] = match_labels
    if expressions:
        selector["matchExpressions"] = expressions
    return selector
