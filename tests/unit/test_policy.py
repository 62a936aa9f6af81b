"""Policies: defaults, validation messages that name the field, the bad value and what is
allowed, and the promotion-window arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from canary.policy import (
    PolicyError,
    RolloutPolicy,
    Schedule,
    format_duration,
    load_policies,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_documented_ones() -> None:
    policy = RolloutPolicy(name="default")
    assert policy.steps == (10, 25, 50, 100)
    assert policy.step_hold == timedelta(minutes=5)
    assert policy.step_deadline == timedelta(minutes=15)
    assert policy.approval.required is False
    assert policy.schedule.is_open(datetime(2026, 1, 1, tzinfo=UTC))
    assert {c.name for c in policy.checks} == {"error-rate", "latency-p99"}
    assert all(c.on_no_data.value == "inconclusive" for c in policy.checks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("250ms", timedelta(milliseconds=250)),
        (90, timedelta(seconds=90)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5x", "m5", "-5m", "1.5h", True, None, [1]])
def test_bad_durations_say_what_is_allowed(text: object) -> None:
    with pytest.raises(ValueError, match=r"30s, 5m, 1h30m or 2d|negative"):
        parse_duration(text)


def test_duration_round_trip() -> None:
    assert format_duration(timedelta(hours=1, minutes=30, seconds=5)) == "1h30m5s"
    assert format_duration(timedelta(0)) == "0s"


# Each row: the fields changed from a valid policy, then the path and words the error must
# contain. Every message names the field, shows the bad value and says what is allowed.
INVALID: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("steps-decreasing", {"steps": [10, 5, 100]}, "steps", "strictly increasing", "[10, 5, 100]"),
    ("steps-not-ending-at-100", {"steps": [10, 50]}, "steps", "last step must be 100", "[10, 50]"),
    ("steps-single", {"steps": [100]}, "steps", "at least one canary step", "[100]"),
    ("steps-out-of-range", {"steps": [0, 100]}, "steps", "between 1 and 100", "[0, 100]"),
    ("steps-not-integers", {"steps": ["ten", 100]}, "steps", "whole percentages", "['ten', 100]"),
    ("steps-float", {"steps": [12.5, 100]}, "steps", "whole percentages", "[12.5, 100]"),
    ("bad-duration", {"stepHold": "5 minutes"}, "stepHold", "1h30m", "'5 minutes'"),
    ("typo-field", {"stepHld": "5m"}, "stepHld", "allowed: name, steps, stepHold", "'5m'"),
    ("bad-name", {"name": "Fraud_Model"}, "name", "lowercase DNS label", "'Fraud_Model'"),
    (
        "hold-shorter-than-interval",
        {"stepHold": "10s", "analysisInterval": "30s"},
        "",
        "shorter than analysisInterval",
        "",
    ),
    (
        "unknown-builtin",
        {"checks": [{"name": "x", "builtin": "cpu", "absoluteLimit": 1}]},
        "checks[0].builtin",
        "allowed: error-rate, latency-p99, request-rate",
        "'cpu'",
    ),
    (
        "check-without-threshold",
        {"checks": [{"name": "e", "builtin": "error-rate"}]},
        "checks[0]",
        "at least one threshold",
        "",
    ),
    (
        "query-without-direction",
        {"checks": [{"name": "q", "query": "up", "absoluteLimit": 1}]},
        "checks[0]",
        "needs 'direction'",
        "",
    ),
    (
        "query-unknown-variable",
        {
            "checks": [
                {
                    "name": "q",
                    "query": "up{ns='${ns}'}",
                    "direction": "lowerIsBetter",
                    "absoluteLimit": 1,
                }
            ]
        },
        "checks[0].query",
        "unknown template variable(s) ns; allowed: ${namespace}",
        "",
    ),
    (
        "bad-direction",
        {"checks": [{"name": "q", "query": "up", "direction": "down", "absoluteLimit": 1}]},
        "checks[0].direction",
        "'lowerIsBetter' or 'higherIsBetter'",
        "'down'",
    ),
    (
        "bad-on-no-data",
        {
            "checks": [
                {"name": "e", "builtin": "error-rate", "absoluteLimit": 1, "onNoData": "ignore"}
            ]
        },
        "checks[0].onNoData",
        "'inconclusive', 'fail' or 'pass'",
        "'ignore'",
    ),
    (
        "only-dry-run-checks",
        {"checks": [{"name": "e", "builtin": "error-rate", "absoluteLimit": 1, "dryRun": True}]},
        "",
        "at least one check must gate",
        "",
    ),
    (
        "duplicate-check",
        {
            "checks": [
                {"name": "e", "builtin": "error-rate", "absoluteLimit": 1},
                {"name": "e", "builtin": "latency-p99", "absoluteLimit": 1},
            ]
        },
        "checks",
        "used twice",
        "",
    ),
    (
        "approval-without-group",
        {"approval": {"gate": "servicenow"}},
        "approval",
        "needs 'riskOwnerGroup'",
        "",
    ),
    (
        "approval-unknown-gate",
        {"approval": {"gate": "email", "riskOwnerGroup": "g"}},
        "approval.gate",
        "'none', 'webhook', 'servicenow' or 'kubernetes'",
        "'email'",
    ),
    (
        "approval-webhook-without-approvers",
        {"approval": {"gate": "webhook", "riskOwnerGroup": "g"}},
        "approval",
        "needs 'approvers'",
        "",
    ),
    (
        "approval-approvers-on-servicenow",
        {"approval": {"gate": "servicenow", "riskOwnerGroup": "g", "approvers": ["a@x"]}},
        "approval",
        "applies to gate 'webhook' only",
        "",
    ),
    (
        "approval-approver-twice",
        {"approval": {"gate": "webhook", "riskOwnerGroup": "g", "approvers": ["Ann@x", "ann@x"]}},
        "approval.approvers",
        "listed twice",
        "",
    ),
    (
        "approval-step-not-a-step",
        {"approval": {"gate": "kubernetes", "riskOwnerGroup": "g", "beforeStep": 30}},
        "",
        "beforeStep 30 is not one of the steps",
        "",
    ),
    (
        "bad-expiry",
        {"approval": {"gate": "webhook", "riskOwnerGroup": "g", "onExpiry": "ignore"}},
        "approval.onExpiry",
        "'hold' or 'rollback'",
        "'ignore'",
    ),
    (
        "bad-timezone",
        {"schedule": {"timezone": "Mars/Olympus"}},
        "schedule.timezone",
        "IANA name",
        "'Mars/Olympus'",
    ),
    (
        "bad-window-time",
        {"schedule": {"windows": [{"start": "9am", "end": "17:00"}]}},
        "schedule.windows[0].start",
        '"HH:MM"',
        "'9am'",
    ),
    (
        "bad-weekday",
        {"schedule": {"windows": [{"days": ["funday"], "start": "09:00", "end": "17:00"}]}},
        "schedule.windows[0].days[0]",
        "'mon', 'tue'",
        "'funday'",
    ),
    (
        "empty-window",
        {"schedule": {"windows": [{"start": "09:00", "end": "09:00"}]}},
        "schedule.windows[0]",
        "window would be empty",
        "",
    ),
    (
        "freeze-backwards",
        {
            "schedule": {
                "freezes": [{"start": "2026-12-20T00:00:00Z", "end": "2026-12-01T00:00:00Z"}]
            }
        },
        "schedule.freezes[0]",
        "'end' must be after 'start'",
        "",
    ),
    (
        "counter-label-taken",
        {
            "checks": [
                {
                    "name": "fpr",
                    "events": 'sum by (ksc_counter) (fp{revision="${revision}"})',
                    "requests": 'sum(all{revision="${revision}"})',
                    "relativeTolerance": 0.1,
                }
            ]
        },
        "checks[0].events",
        "must not use the label 'ksc_counter'",
        "",
    ),
    (
        "events-without-requests",
        {
            "checks": [
                {
                    "name": "fpr",
                    "events": 'sum(fp{revision="${revision}"})',
                    "relativeTolerance": 0.1,
                }
            ]
        },
        "checks[0]",
        "'events' and 'requests' go together",
        "",
    ),
    (
        "events-and-query",
        {
            "checks": [
                {
                    "name": "fpr",
                    "events": "a",
                    "requests": "b",
                    "query": "c",
                    "direction": "lowerIsBetter",
                    "relativeTolerance": 0.1,
                }
            ]
        },
        "checks[0]",
        "set exactly one of 'builtin'",
        "",
    ),
    (
        "events-higher-is-better",
        {
            "checks": [
                {
                    "name": "approvals",
                    "events": "a",
                    "requests": "b",
                    "direction": "higherIsBetter",
                    "relativeTolerance": 0.1,
                }
            ]
        },
        "checks[0]",
        "count its complement",
        "",
    ),
    (
        "events-without-tolerance",
        {"checks": [{"name": "fpr", "events": "a", "requests": "b", "absoluteLimit": 0.05}]},
        "checks[0]",
        "needs 'relativeTolerance'",
        "",
    ),
    (
        "false-rollback-rate-zero",
        {"falseRollbackRate": 0},
        "falseRollbackRate",
        "greater than 0",
        "0",
    ),
    (
        "false-promotion-rate-too-high",
        {"falsePromotionRate": 0.6},
        "falsePromotionRate",
        "less than 0.5",
        "0.6",
    ),
    (
        "unknown-progression",
        {"progression": "timer"},
        "progression",
        "'evidence' or 'power'",
        "'timer'",
    ),
    (
        "shadow-percent",
        {"shadow": {"enabled": True, "mirrorPercent": 150}},
        "shadow.mirrorPercent",
        "less than or equal to 100",
        "150",
    ),
    (
        "shadow-old-field",
        {"shadow": {"enabled": True, "requiredBeforeCanary": False}},
        "shadow",
        "requiredBeforeCanary was replaced by after: gate",
        "",
    ),
    (
        "shadow-after-unknown",
        {"shadow": {"enabled": True, "after": "promote"}},
        "shadow.after",
        "'gate' or 'report'",
        "'promote'",
    ),
    (
        "shadow-timeout-short",
        {"shadow": {"enabled": True, "duration": "10m", "timeout": "5m"}},
        "shadow",
        "timeout (5m) must not be shorter than duration (10m)",
        "",
    ),
    (
        "shadow-agreement-above-one",
        {"shadow": {"enabled": True, "minAgreement": 1.5}},
        "shadow.minAgreement",
        "less than or equal to 1",
        "1.5",
    ),
    (
        "shadow-min-samples-zero",
        {"shadow": {"enabled": True, "minSamples": 0}},
        "shadow.minSamples",
        "greater than or equal to 1",
        "0",
    ),
    (
        "agreement-as-a-check",
        {"checks": [{"name": "agree", "builtin": "decision-agreement", "absoluteLimit": 0.9}]},
        "checks[0].builtin",
        "decision-agreement is not a check a policy can list: it compares a challenger "
        "InferenceService's outputs with the champion's during the shadow phase, and is "
        "generated from shadow.minAgreement; set that instead",
        "'decision-agreement'",
    ),
    (
        "score-shift-as-a-check",
        {"checks": [{"name": "psi", "builtin": "score-shift", "absoluteLimit": 0.1}]},
        "checks[0].builtin",
        "generated from shadow.maxScoreShift; set that instead",
        "'score-shift'",
    ),
    (
        "check-named-like-the-generated-one",
        {
            "shadow": {"enabled": True, "minAgreement": 0.95},
            "checks": [
                {
                    "name": "decision-agreement",
                    "query": "agreement{revision='${revision}'}",
                    "direction": "higherIsBetter",
                    "absoluteLimit": 0.9,
                }
            ],
        },
        "",
        "check name 'decision-agreement' is taken while shadow.minAgreement is set",
        "",
    ),
    (
        "shadow-batch-zero",
        {"shadow": {"enabled": True, "maxPredictionsPerRequest": 0}},
        "shadow.maxPredictionsPerRequest",
        "greater than or equal to 1",
        "0",
    ),
]


@pytest.mark.parametrize(
    ("changes", "path", "message", "shown"),
    [pytest.param(c, p, m, s, id=i) for i, c, p, m, s in INVALID],
)
def test_invalid_policies_get_precise_errors(
    tmp_path: Path, changes: dict[str, Any], path: str, message: str, shown: str
) -> None:
    import yaml

    document = {"name": "fraud", **changes}
    file = tmp_path / "policy.yaml"
    file.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policies(file)
    lines = [str(p) for p in caught.value.problems]
    text = "\n".join(lines)
    assert message in text, text
    assert str(file) in text
    if path:
        assert f"field {path}:" in text, text
    if shown:
        assert f"(got {shown}" in text, text


def test_the_output_checks_names_are_free_unless_their_thresholds_are_set() -> None:
    custom = {
        "name": "score-shift",
        "query": "psi{revision='${revision}'}",
        "direction": "lowerIsBetter",
        "absoluteLimit": 0.2,
    }
    policy = RolloutPolicy.model_validate(
        {"name": "fraud", "shadow": {"enabled": True, "minAgreement": 0.9}, "checks": [custom]}
    )
    assert [c.name for c in policy.checks] == ["score-shift"]
    assert policy.shadow.max_predictions_per_request == 1  # one prediction per request unless told
    with pytest.raises(ValueError, match=r"is taken while shadow\.maxScoreShift is set"):
        RolloutPolicy.model_validate(
            {"name": "fraud", "shadow": {"maxScoreShift": 0.1}, "checks": [custom]}
        )


def test_all_problems_in_a_directory_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nsteps: [50, 10]\n")
    (tmp_path / "b.yml").write_text("name: b\nstepHold: forever\n")
    (tmp_path / "c.yaml").write_text("name: [broken\n")
    (tmp_path / "d.yaml").write_text("- just\n- a list\n")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.yaml").write_text("ignored: true")
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    text = str(caught.value)
    assert "a.yaml: policy 'a': field steps:" in text
    assert "b.yml: policy 'b': field stepHold:" in text
    assert "c.yaml: invalid YAML at line 2" in text
    assert "d.yaml[0]: a policy must be a mapping" in text
    assert "hidden" not in text
    assert "notes" not in text


def test_duplicate_policy_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: same\n")
    (tmp_path / "b.yaml").write_text("name: same\n")
    with pytest.raises(PolicyError, match="already defined in"):
        load_policies(tmp_path)


def test_several_documents_and_lists_in_one_file(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("name: one\n---\n- name: two\n- name: three\n")
    assert load_policies(file).names() == ["one", "three", "two"]


def test_unknown_policy_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: default\n")
    with pytest.raises(KeyError, match="known policies: default"):
        load_policies(tmp_path).get("credit")


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        load_policies(tmp_path / "absent")
    with pytest.raises(PolicyError, match=r"no \*\.yaml"):
        load_policies(tmp_path)


def test_shipped_example_policies_are_valid() -> None:
    policies = load_policies(REPO / "deploy" / "policies")
    assert {"default", "fraud-scoring", "credit-decisioning"} <= set(policies.names())
    credit = policies.get("credit-decisioning")
    assert credit.needs_approval_for(100)
    assert not credit.needs_approval_for(50)


def test_custom_query_template_is_filled() -> None:
    policy = load_policies(REPO / "deploy" / "policies").get("fraud-scoring")
    check = next(c for c in policy.checks if c.name == "fraud-false-positive-rate")
    query = check.render(
        {
            "namespace": "cards",
            "revision": "scorer-predictor-00002",
            "window": "2m",
            "isvc": "scorer",
            "canary_revision": "x",
            "baseline_revision": "y",
        }
    )
    assert 'revision="scorer-predictor-00002"' in query
    assert "[2m]" in query
    assert "${" not in query


# --- windows ------------------------------------------------------------------------------

LONDON_WEEKDAYS = Schedule.model_validate(
    {
        "timezone": "Europe/London",
        "windows": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
        ],
        "freezes": [
            {"start": "2026-12-24T00:00:00", "end": "2026-12-29T00:00:00", "reason": "christmas"}
        ],
    }
)
NIGHT = Schedule.model_validate(
    {"timezone": "UTC", "windows": [{"days": ["fri"], "start": "22:00", "end": "02:00"}]}
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "at", "is_open", "next_open"),
    [
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 11, 23, 10),
            True,
            utc(2026, 11, 23, 10),
            id="monday-morning-winter",
        ),
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 11, 23, 17),
            False,
            utc(2026, 11, 24, 9),
            id="end-is-exclusive",
        ),
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 11, 21, 12),
            False,
            utc(2026, 11, 23, 9),
            id="saturday-waits-for-monday",
        ),
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 7, 1, 8, 30),
            True,
            utc(2026, 7, 1, 8, 30),
            id="summer-time-09:00-is-08:00-utc",
        ),
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 7, 1, 7, 59),
            False,
            utc(2026, 7, 1, 8),
            id="summer-before-opening",
        ),
        pytest.param(
            LONDON_WEEKDAYS,
            utc(2026, 12, 24, 10),
            False,
            utc(2026, 12, 29, 9),
            id="freeze-then-next-window",
        ),
        pytest.param(
            NIGHT, utc(2026, 11, 27, 23), True, utc(2026, 11, 27, 23), id="friday-night-window"
        ),
        pytest.param(
            NIGHT,
            utc(2026, 11, 28, 1, 59),
            True,
            utc(2026, 11, 28, 1, 59),
            id="crosses-midnight-into-saturday",
        ),
        pytest.param(
            NIGHT, utc(2026, 11, 28, 2), False, utc(2026, 12, 4, 22), id="after-the-night-window"
        ),
    ],
)
def test_promotion_windows(
    schedule: Schedule, at: datetime, is_open: bool, next_open: datetime
) -> None:
    assert schedule.is_open(at) is is_open
    assert schedule.next_open(at) == next_open


def test_windows_need_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        LONDON_WEEKDAYS.is_open(datetime(2026, 1, 1))  # noqa: DTZ001


def test_unquoted_yaml_times_are_understood(tmp_path: Path) -> None:
    # YAML 1.1 reads 09:00 unquoted as the integer 540; people will write it that way.
    file = tmp_path / "p.yaml"
    file.write_text("name: p\nschedule:\n  windows:\n    - start: 09:00\n      end: 17:30\n")
    window = load_policies(file).get("p").schedule.windows[0]
    assert (window.start.hour, window.end.hour, window.end.minute) == (9, 17, 30)
