"""What an operator types and reads: NAMESPACE/NAME targets and the `canary status` table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canary.ops import StatusLine, parse_target, render_status


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud/scorer", ("fraud", "scorer")),
        ("credit-risk/pd-model-v2", ("credit-risk", "pd-model-v2")),
        ("a/b", ("a", "b")),
    ],
)
def test_parse_target_splits_namespace_and_name(text: str, expected: tuple[str, str]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("scorer", id="no-namespace"),
        pytest.param("", id="empty"),
        pytest.param("/scorer", id="empty-namespace"),
        pytest.param("fraud/", id="empty-name"),
        pytest.param("/", id="only-a-slash"),
        pytest.param("fraud/scorer/v2", id="two-slashes"),
    ],
)
def test_parse_target_rejects_anything_but_namespace_slash_name(text: str) -> None:
    with pytest.raises(ValueError, match="expected NAMESPACE/NAME") as caught:
        parse_target(text)
    assert str(caught.value) == f"expected NAMESPACE/NAME, got {text!r}"


SCORER = StatusLine(
    namespace="fraud",
    name="scorer",
    phase="Progressing",
    step="2/3",
    weights="scorer-predictor-00002=50% scorer-predictor-00001=50% (target 50%)",
    verdict="Successful at 10:04:30",
    next_action="holding 50% until 2026-11-23T10:09:30+00:00 (next check in 5m)",
    started="2026-11-23 10:00:00",
)
PD = StatusLine(
    namespace="credit-risk",
    name="pd",
    phase="Paused",
    step="1/3",
    weights="pd-predictor-00007=10% pd-predictor-00006=90% (target 10%)",
    verdict="-",
    next_action="paused: investigating alert",
    started="2026-11-22 16:20:00",
)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            [],
            ["NAMESPACE  NAME  PHASE  STEP  WEIGHTS  LAST VERDICT  NEXT"],
            id="header-only",
        ),
        pytest.param(
            [SCORER, PD],
            [
                "NAMESPACE    NAME    PHASE        STEP  "
                "WEIGHTS                                                             "
                "LAST VERDICT            NEXT",
                "fraud        scorer  Progressing  2/3   "
                "scorer-predictor-00002=50% scorer-predictor-00001=50% (target 50%)  "
                "Successful at 10:04:30  holding 50% until 2026-11-23T10:09:30+00:00 "
                "(next check in 5m)",
                "credit-risk  pd      Paused       1/3   "
                "pd-predictor-00007=10% pd-predictor-00006=90% (target 10%)          "
                "-                       paused: investigating alert",
            ],
            id="two-rollouts",
        ),
    ],
)
def test_render_status_aligns_columns_and_leaves_the_last_one_ragged(
    lines: list[StatusLine], expected: list[str]
) -> None:
    rendered = render_status(lines)

    assert rendered.splitlines() == expected
    assert not any(line != line.rstrip() for line in rendered.splitlines())
    header = rendered.splitlines()[0]
    for row in rendered.splitlines()[1:]:  # every column starts under its heading
        for heading in ("NAME", "PHASE", "STEP", "WEIGHTS", "LAST VERDICT", "NEXT"):
            start = header.index("  " + heading) + 2
            assert row[start - 2 : start] == "  "
            assert row[start] != " "


def test_render_status_shows_each_checks_evidence_under_its_rollout() -> None:
    evidence = (
        "error-rate: 42% of the evidence to rule out +50%, about 3min more at 20 req/s",
        "latency-p99: a regression beyond +20% is ruled out",
    )
    rendered = render_status([replace(SCORER, evidence=evidence), PD]).splitlines()
    assert rendered[1].startswith("fraud        scorer")
    assert rendered[2:4] == [f"  {line}" for line in evidence]
    assert rendered[4].startswith("credit-risk  pd")
