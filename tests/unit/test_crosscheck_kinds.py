"""How the cross-check classifies a row that has no chained record: older than chaining,
purged beyond the retention, or not in the chain (tampering)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from canary.audit.crosscheck import _Chained, _missing

CHAINING_BEGAN = datetime(2026, 6, 1, tzinfo=UTC)
PURGE_CUTOFF = datetime(2026, 9, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row_time", "purged", "kind", "tampering"),
    [
        (CHAINING_BEGAN - timedelta(days=1), None, "predates", False),
        (CHAINING_BEGAN + timedelta(days=1), None, "not_in_chain", True),
        (PURGE_CUTOFF - timedelta(days=1), PURGE_CUTOFF, "purged", False),
        (PURGE_CUTOFF, PURGE_CUTOFF, "purged", False),
        (PURGE_CUTOFF + timedelta(seconds=1), PURGE_CUTOFF, "not_in_chain", True),
    ],
    ids=["before chaining", "after chaining", "before a purge", "at the cutoff", "after it"],
)
def test_a_row_without_its_record(
    row_time: datetime, purged: datetime | None, kind: str, tampering: bool
) -> None:
    chained = _Chained({}, {}, {}, {}, CHAINING_BEGAN, [], purged)
    found = _missing("commands", "cmd-1", "command cmd-1", row_time, chained)
    assert (found.kind, found.tampering) == (kind, tampering)
    if kind == "purged":
        assert "purged with the trail before 2026-09-01" in found.problem
