"""The demo's copy of the shipped credit-decisioning policy: the demo's timings and no
schedule, everything else as shipped; and the simulator's default people can approve it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from canary.policy import load_policies
from testbed.demo import DEMO_POLICY, DEMO_TIMINGS, SHIPPED_CREDIT_POLICY, regulated_policy
from testbed.servicenow.process import DEFAULT_SEED
from testbed.servicenow.store import Seed

SATURDAY = datetime(2026, 12, 5, 19, 30, tzinfo=UTC)  # 14:30 in New York
IN_THE_FREEZE = datetime(2026, 12, 21, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York
TUESDAY_MORNING = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)  # 10:00 in New York


def _shipped() -> dict[str, object]:
    document = yaml.safe_load(SHIPPED_CREDIT_POLICY.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_only_the_timings_and_the_schedule_differ_from_the_shipped_file() -> None:
    copy = yaml.safe_load(regulated_policy(now=SATURDAY).text)
    shipped = _shipped()
    demo = yaml.safe_load(DEMO_POLICY)
    assert "schedule" in shipped
    assert "schedule" not in copy
    assert {k: copy[k] for k in DEMO_TIMINGS} == {k: demo[k] for k in DEMO_TIMINGS}
    kept = set(shipped) - set(DEMO_TIMINGS) - {"schedule"}
    assert {k: copy[k] for k in kept} == {k: shipped[k] for k in kept}
    assert set(copy) == kept | set(DEMO_TIMINGS)


def test_the_copy_loads_and_keeps_the_approval_gate(tmp_path: Path) -> None:
    policy = regulated_policy(now=SATURDAY)
    (tmp_path / "credit.yaml").write_text(policy.text, encoding="utf-8")
    loaded = load_policies(tmp_path).get(policy.name)
    assert policy.name == "credit-decisioning"
    assert loaded.approval.gate.value == "servicenow"
    assert loaded.approval.risk_owner_group == "credit-risk-owners"
    assert loaded.needs_approval_for(100)
    assert loaded.steps == (10, 50, 100)
    assert loaded.step_hold.total_seconds() == 5


def test_the_copy_may_advance_when_the_shipped_schedule_would_hold_it(tmp_path: Path) -> None:
    shipped = load_policies(SHIPPED_CREDIT_POLICY).get("credit-decisioning")
    (tmp_path / "credit.yaml").write_text(regulated_policy(now=SATURDAY).text, encoding="utf-8")
    copy = load_policies(tmp_path).get("credit-decisioning")
    for at in (SATURDAY, IN_THE_FREEZE):
        assert not shipped.schedule.is_open(at)
        assert copy.schedule.is_open(at)


def test_the_output_says_what_was_changed_and_why() -> None:
    timings, schedule = regulated_policy(now=SATURDAY).notes
    assert "stepHold 30m -> 5s" in timings
    assert "maxStepDuration 1h30m (3 x stepHold) -> 3m" in timings
    assert "America/New_York" in schedule
    assert "year-end change freeze 2026-12-18 to 2027-01-04" in schedule
    assert "it would hold this run: outside the promotion windows" in schedule
    frozen = regulated_policy(now=IN_THE_FREEZE).notes[1]
    assert "it would hold this run: change freeze (year-end change freeze)" in frozen
    assert "would let this run advance now" in regulated_policy(now=TUESDAY_MORNING).notes[1]


def test_a_file_that_is_not_one_policy_is_refused(tmp_path: Path) -> None:
    listed = tmp_path / "two.yaml"
    listed.write_text("- name: a\n- name: b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="does not hold one policy mapping"):
        regulated_policy(listed, now=SATURDAY)


def test_the_simulator_s_default_people_include_the_shipped_risk_owner_group() -> None:
    group = _shipped()["approval"]
    assert isinstance(group, dict)
    seed = Seed.load(DEFAULT_SEED)
    owners = next(g for g in seed.groups if g.name == group["riskOwnerGroup"])
    assert set(owners.members) == {"alice", "bob"}
    assert {u.user_name for u in seed.users} >= {"alice", "bob"}
