"""The ``rollouts`` columns derived from a rollout's state document: the storageUris of its
canary and stable revisions, which the model filter of the history queries reads.

The same cases are the rows of the migration's backfill test
(``tests/integration/test_migrations.py``), so that the store's writer and migration 0009's
SQL are held to one rule."""

from __future__ import annotations

from typing import Any

import pytest

from canary.audit.rollouts import storage_uris


def _machine(canary: Any, stable: Any) -> dict[str, Any]:
    return {"v": 1, "machine": {"phase": "Progressing", "canary": canary, "stable": stable}}


def _ref(name: str, uri: Any) -> dict[str, Any]:
    return {"name": name, "storage_uri": uri, "artifact_digest": None}


STORAGE_URI_CASES: list[Any] = [
    pytest.param(
        _machine(_ref("r2", "s3://models/v2"), _ref("r1", "s3://models/v1")),
        ("s3://models/v2", "s3://models/v1"),
        id="both",
    ),
    pytest.param(_machine(_ref("r1", "s3://models/v1"), None), ("s3://models/v1", None),
                 id="first-rollout-no-stable"),
    pytest.param(_machine(_ref("r2", None), _ref("r1", "gs://m/v1")), (None, "gs://m/v1"),
                 id="canary-without-uri"),
    pytest.param(_machine({"name": "r2"}, {"name": "r1"}), (None, None), id="no-uri-keys"),
    pytest.param(
        _machine(_ref("r2", 'pvc://models/ünïcode "quoted"\\x'), _ref("r1", "")),
        ('pvc://models/ünïcode "quoted"\\x', ""),
        id="escapes-and-empty",
    ),
    pytest.param(_machine(_ref("r2", 42), _ref("r1", ["s3://a"])), (None, None),
                 id="not-strings"),
    pytest.param(_machine("r2", ["r1"]), (None, None), id="refs-not-objects"),
    pytest.param({"v": 1, "machine": ["canary"]}, (None, None), id="machine-not-an-object"),
    pytest.param({"phase": "progressing", "step": 0}, (None, None), id="no-machine"),
]  # fmt: skip


@pytest.mark.parametrize(("state", "expected"), STORAGE_URI_CASES)
def test_storage_uris_are_the_strings_at_machine_canary_and_stable(
    state: dict[str, Any], expected: tuple[str | None, str | None]
) -> None:
    assert storage_uris(state) == expected
