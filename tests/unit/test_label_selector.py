"""Label selectors in kubectl's form, as ``--namespace-selector`` takes them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from canary.k8s.label_selector import parse_label_selector


@pytest.mark.parametrize(
    ("text", "selector"),
    [
        ("team=fraud", {"matchLabels": {"team": "fraud"}}),
        ("team==fraud", {"matchLabels": {"team": "fraud"}}),
        (" team = fraud , tier=gold ", {"matchLabels": {"team": "fraud", "tier": "gold"}}),
        ("team=", {"matchLabels": {"team": ""}}),
        (
            "env!=dev",
            {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]},
        ),
        (
            "team in (fraud, credit)",
            {
                "matchExpressions": [
                    {"key": "team", "operator": "In", "values": ["fraud", "credit"]}
                ]
            },
        ),
        (
            "env notin (dev,test)",
            {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev", "test"]}]},
        ),
        ("canary", {"matchExpressions": [{"key": "canary", "operator": "Exists"}]}),
        ("!legacy", {"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}),
        (
            "kubernetes.io/metadata.name in (fraud,credit),!legacy,tier=gold",
            {
                "matchLabels": {"tier": "gold"},
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": ["fraud", "credit"],
                    },
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            },
        ),
        ("team=fraud,team=fraud", {"matchLabels": {"team": "fraud"}}),
    ],
)
def test_each_form_becomes_what_the_api_stores(text: str, selector: dict[str, Any]) -> None:
    assert parse_label_selector(text) == selector


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the label selector is empty"),
        ("   ", "the label selector is empty"),
        ("a=b,", "has an empty requirement (stray comma?)"),
        ("a=b,,c", "has an empty requirement (stray comma?)"),
        ("team in ()", "'team in ()': give at least one value in the parentheses"),
        ("team in (a,b", "unclosed '(' in label selector"),
        ("team in a,b)", "unmatched ')' in label selector"),
        ("team in ((a))", "nested '(' in label selector"),
        ("a=b=c", "cannot read 'a=b=c': use key=value, key!=value"),
        ("team fraud", "cannot read 'team fraud'"),
        ("team=fraud,team=credit", "label 'team' is required to equal both 'fraud' and 'credit'"),
        ("Team_=x", "label key 'Team_': the name 'Team_' must be 1-63 characters"),
        ("-team=x", "the name '-team' must be 1-63 characters"),
        ("Example.COM/team=x", "the prefix 'Example.COM' must be a DNS subdomain"),
        ("/team=x", "label key '/team' has an empty prefix before '/'"),
        ("team=fr@ud", "label 'team': the value 'fr@ud' must be empty or 1-63 characters"),
        ("team=-fraud", "label 'team': the value '-fraud' must be empty or 1-63 characters"),
        (f"team={'x' * 64}", "must be empty or 1-63 characters"),
        (f"{'k' * 64}=x", "must be 1-63 characters"),
        ("team in (fraud,-x)", "the value '-x' must be empty or 1-63 characters"),
    ],
)
def test_a_bad_selector_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_label_selector(text)
