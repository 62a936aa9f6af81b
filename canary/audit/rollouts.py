"""The ``rollouts`` table: the controller's live state of each rollout (mutable, with an
optimistic ``version``).

:class:`RolloutBook` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from canary.audit.errors import ActiveRolloutExists, StaleRollout
from canary.audit.records import RolloutRow
from canary.audit.schema import RolloutModel

__all__ = ["RolloutBook", "storage_uris"]


def storage_uris(state: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The canary's and the stable revision's storageUri in a rollout's state document
    (``machine.canary.storage_uri``, ``machine.stable.storage_uri``; None where that is not
    a string): the ``rollouts`` columns ``canary_storage_uri`` and ``stable_storage_uri``.
    Migration 0009 filled them from existing rows with the same rule, in SQL."""
    machine = state.get("machine")
    found: list[str | None] = []
    for side in ("canary", "stable"):
        ref = machine.get(side) if isinstance(machine, Mapping) else None
        uri = ref.get("storage_uri") if isinstance(ref, Mapping) else None
        found.append(uri if isinstance(uri, str) else None)
    return found[0], found[1]


def _rollout_values(row: RolloutRow) -> dict[str, Any]:
    canary_uri, stable_uri = storage_uris(row.state)
    return {
        "id": row.id,
        "namespace": row.namespace,
        "name": row.name,
        "isvc_uid": row.isvc_uid,
        "policy_name": row.policy_name,
        "mode": row.mode,
        "phase": row.phase,
        "step_index": row.step_index,
        "canary_revision": row.canary_revision,
        "stable_revision": row.stable_revision,
        "canary_storage_uri": canary_uri,
        "stable_storage_uri": stable_uri,
        "state": dict(row.state),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next_check_at": row.next_check_at,
        "active": row.active,
    }


def _rollout_from(m: Mapping[Any, Any]) -> RolloutRow:
    return RolloutRow(
        id=m["id"],
        namespace=m["namespace"],
        name=m["name"],
        isvc_uid=m["isvc_uid"],
        policy_name=m["policy_name"],
        mode=m["mode"],
        phase=m["phase"],
        step_index=m["step_index"],
        canary_revision=m["canary_revision"],
        stable_revision=m["stable_revision"],
        state=m["state"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        next_check_at=m["next_check_at"],
        active=bool(m["active"]),
        version=m["version"],
    )


class RolloutBook:
    """Write and read rollouts (mixed into the audit store)."""

    _dialect: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    def _write_rollout(
        self, conn: Connection, rollout: RolloutRow, expected_version: int | None
    ) -> None:
        # Runs under the chain-head lock, so this read-check-write is not racy for writers
        # that go through commit(); the UPDATE's version condition guards the rest. An
        # update is one statement; why it changed nothing is read only when it did not.
        try:
            if expected_version is None:
                self._insert_rollout(conn, rollout)
                return
            values = _rollout_values(rollout)
            # RETURNING rather than rowcount: psycopg reports no rowcount here.
            updated = conn.execute(
                update(RolloutModel)
                .where(RolloutModel.id == rollout.id, RolloutModel.version == expected_version)
                .values(
                    **{k: v for k, v in values.items() if k not in ("id", "created_at")},
                    version=expected_version + 1,
                )
                .returning(RolloutModel.version)
            ).first()
        except IntegrityError as exc:
            if "uq_rollouts_active_target" in str(exc.orig) or "rollouts.namespace" in str(
                exc.orig
            ):
                raise ActiveRolloutExists(
                    f"another rollout is active for {rollout.namespace}/{rollout.name}"
                ) from exc
            raise
        if updated is None:
            stored = conn.execute(
                select(RolloutModel.version).where(RolloutModel.id == rollout.id)
            ).first()
            found = "it does not exist" if stored is None else f"stored is {stored.version}"
            raise StaleRollout(
                f"rollout {rollout.id}: expected version {expected_version}, {found}"
            )

    @staticmethod
    def _update_rollouts(conn: Connection, updates: Sequence[tuple[RolloutRow, int]]) -> bool:
        """Update each rollout that is still at its expected version, all in one
        statement (executed for many parameter sets); True only if every one was. A
        caller that gets False must roll back: some were updated and some not."""
        if not updates:
            return True
        names = [k for k in _rollout_values(updates[0][0]) if k not in ("id", "created_at")]
        table = RolloutModel.__table__
        stmt = (
            update(RolloutModel)
            .where(
                table.c.id == bindparam("w_id", type_=table.c.id.type),
                table.c.version == bindparam("w_expected", type_=table.c.version.type),
            )
            .values(
                {
                    **{name: bindparam(f"w_{name}", type_=table.c[name].type) for name in names},
                    "version": bindparam("w_version", type_=table.c.version.type),
                }
            )
        )
        params = []
        for rollout, expected in updates:
            values = _rollout_values(rollout)
            row = {f"w_{name}": values[name] for name in names}
            row.update(w_id=rollout.id, w_expected=expected, w_version=expected + 1)
            params.append(row)
        return conn.execute(stmt, params).rowcount == len(updates)

    def _insert_rollout(self, conn: Connection, rollout: RolloutRow) -> None:
        stored = conn.execute(
            select(RolloutModel.version).where(RolloutModel.id == rollout.id)
        ).first()
        if stored is not None:
            raise StaleRollout(f"rollout {rollout.id} already exists (version {stored.version})")
        self._ensure_single_active(conn, rollout)
        conn.execute(insert(RolloutModel).values(**_rollout_values(rollout), version=1))

    @staticmethod
    def _ensure_single_active(conn: Connection, rollout: RolloutRow) -> None:
        if not rollout.active:
            return
        other = conn.execute(
            select(RolloutModel.id).where(
                RolloutModel.namespace == rollout.namespace,
                RolloutModel.name == rollout.name,
                RolloutModel.active.is_(True),
                RolloutModel.id != rollout.id,
            )
        ).first()
        if other is not None:
            raise ActiveRolloutExists(
                f"rollout {other.id} is already active for {rollout.namespace}/{rollout.name}"
            )

    def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__).where(RolloutModel.id == rollout_id)
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def active_rollouts(self) -> list[RolloutRow]:
        """All active rollouts, ordered by namespace and name."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(RolloutModel.__table__)
                .where(RolloutModel.active.is_(True))
                .order_by(RolloutModel.namespace, RolloutModel.name)
            ).all()
        return [_rollout_from(row._mapping) for row in rows]

    def active_phase_counts(self) -> dict[str, int]:
        """How many active rollouts are in each phase, counted by the database: the
        ``kserve_canary_rollouts`` gauge reads this every few seconds, and loading every
        active rollout's state document for it cost a third of the controller's CPU with
        1,000 rollouts."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(RolloutModel.phase, func.count())
                .where(RolloutModel.active.is_(True))
                .group_by(RolloutModel.phase)
            ).all()
        return {str(phase): int(count) for phase, count in rows}

    def active_schedule(self) -> list[tuple[str, str, datetime | None]]:
        """Every active rollout's namespace, name and ``next_check_at``, ordered by namespace
        and name: what the scheduler needs after gaining leadership, without the state
        documents."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(RolloutModel.namespace, RolloutModel.name, RolloutModel.next_check_at)
                .where(RolloutModel.active.is_(True))
                .order_by(RolloutModel.namespace, RolloutModel.name)
            ).all()
        return [(str(ns), str(name), at) for ns, name, at in rows]

    def rollout_for(self, namespace: str, name: str) -> RolloutRow | None:
        """The active rollout of an InferenceService, if any."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__).where(
                    RolloutModel.namespace == namespace,
                    RolloutModel.name == name,
                    RolloutModel.active.is_(True),
                )
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def last_rollout_for(self, namespace: str, name: str) -> RolloutRow | None:
        """The most recently created rollout of an InferenceService, active or finished."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                select(RolloutModel.__table__)
                .where(RolloutModel.namespace == namespace, RolloutModel.name == name)
                .order_by(RolloutModel.created_at.desc(), RolloutModel.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _rollout_from(row._mapping)

    def rollouts(
        self,
        *,
        namespace: str | None = None,
        name: str | None = None,
        active: bool | None = None,
        limit: int = 200,
    ) -> list[RolloutRow]:
        """Rollouts, newest first, optionally filtered."""
        query = select(RolloutModel.__table__)
        if namespace is not None:
            query = query.where(RolloutModel.namespace == namespace)
        if name is not None:
            query = query.where(RolloutModel.name == name)
        if active is not None:
            query = query.where(RolloutModel.active.is_(active))
        query = query.order_by(RolloutModel.created_at.desc(), RolloutModel.id.desc())
        with self._tx(write=False) as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [_rollout_from(row._mapping) for row in rows]

    def rollouts_ended_since(self, at: datetime) -> int:
        """How many rollouts are finished and were last written at or after ``at`` (a
        rollout's end is written with its last records, so those are in the chain)."""
        with self._tx(write=False) as conn:
            count = conn.execute(
                select(func.count())
                .select_from(RolloutModel)
                .where(RolloutModel.active.is_(False), RolloutModel.updated_at >= at)
            ).scalar()
        return int(count or 0)
