"""Least privilege on PostgreSQL: the owner role migrates, the application role runs.

The append-only triggers stop an UPDATE, DELETE or TRUNCATE of history, but a table's owner
can disable them (``ALTER TABLE ... DISABLE TRIGGER``) and a superuser can do anything. So
production keeps two roles: an *owner* that runs ``canary db upgrade`` and owns the tables,
and an *application* role the controller connects as, which may only read and append to
history and update the controller's own state. :meth:`Privileges.grant_application_role`
(``canary db grant --app-role ROLE``, run as the owner) gives the application role exactly
that, in one transaction; :meth:`Privileges.role_access` tells the controller, at start,
whether the role it connected as could rewrite history.

:class:`Privileges` is a part of :class:`canary.audit.AuditStore`, which provides the
transactions. PostgreSQL only: SQLite has no roles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, text

from canary.audit.errors import AuditError, RoleRefused
from canary.audit.schema import APPEND_ONLY_TABLES, Base

__all__ = [
    "APP_PRIVILEGES",
    "MUTABLE_TABLES",
    "OWNER_WRITTEN_TABLES",
    "VERSION_TABLE",
    "GrantReport",
    "Privileges",
    "RoleAccess",
]

# The controller's own state: inserted and updated, never deleted (no product code deletes).
MUTABLE_TABLES: Final = ("rollouts", "approvals", "commands", "leader_fence")
VERSION_TABLE: Final = "alembic_version"  # read at start, to refuse a newer schema
# Append-only tables only the owner writes: `canary audit purge` (run as the owner) adds a row
# to audit_purges; the controller reads it to verify the chain from where a purge left it.
OWNER_WRITTEN_TABLES: Final = ("audit_purges",)

# Exactly what the application role gets, table by table. Never DELETE: the only deletion
# in the product is the owner's purge (canary/audit/purges.py).
APP_PRIVILEGES: Final[Mapping[str, tuple[str, ...]]] = {
    **{t: ("SELECT", "INSERT") for t in APPEND_ONLY_TABLES if t not in OWNER_WRITTEN_TABLES},
    **dict.fromkeys(MUTABLE_TABLES, ("SELECT", "INSERT", "UPDATE")),
    **dict.fromkeys(OWNER_WRITTEN_TABLES, ("SELECT",)),
    VERSION_TABLE: ("SELECT",),
}
_TABLE_PRIVILEGES: Final = (
    "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
)  # fmt: skip


def _unclassified() -> set[str]:
    """Tables of the models that no list above names (a new table needs a decision)."""
    return set(Base.metadata.tables) - set(APP_PRIVILEGES)


@dataclass(frozen=True)
class RoleAccess:
    """What the role a store is connected as could do to the audit history."""

    role: str
    superuser: bool  # a superuser, or a member of one
    owns: tuple[str, ...]  # audit tables it owns, or whose owner it is a member of
    excess: tuple[str, ...]  # privileges beyond the controller's needs, "DELETE on audit_log"

    @property
    def privileged(self) -> bool:
        return self.superuser or bool(self.owns) or bool(self.excess)

    def could(self) -> str:
        """What the role could do that the controller never needs, in words."""
        if self.superuser:
            return (
                "as a superuser it can UPDATE, DELETE or TRUNCATE the audit history, disable "
                "the append-only triggers, and drop the tables"
            )
        if self.owns:
            return (
                f"as the owner of {', '.join(self.owns)} it can disable the append-only "
                "triggers (ALTER TABLE ... DISABLE TRIGGER) and then UPDATE or DELETE the "
                "audit history, or drop the tables"
            )
        return f"it holds {', '.join(self.excess)}, which the controller never uses"

    def fix(self) -> str:
        return (
            "connect the controller as an application role: create one (CREATE ROLE "
            "ksc_app LOGIN PASSWORD '...'), run `canary db grant --app-role ksc_app` with "
            "the owner's database URL, and give the controller ksc_app's URL"
        )


@dataclass(frozen=True)
class GrantReport:
    """What ``canary db grant`` found and did."""

    role: str
    schema: str
    database: str
    changed: bool
    granted: tuple[tuple[str, tuple[str, ...]], ...]  # (table, privileges), in order
    revoked: tuple[str, ...]  # what was taken away, in words ("UPDATE on audit_log from ...")

    def lines(self) -> list[str]:
        """A human-readable account, one line each."""
        head = f"role {self.role} on database {self.database}, schema {self.schema}: " + (
            "privileges set" if self.changed else "already exactly so; nothing changed"
        )
        lines = [head, f"  USAGE on schema {self.schema}"]
        by_privileges: dict[tuple[str, ...], list[str]] = {}
        for table, privileges in self.granted:
            by_privileges.setdefault(privileges, []).append(table)
        for privileges, tables in by_privileges.items():
            lines.append(f"  {', '.join(privileges)} on {', '.join(tables)}")
        lines.append(
            "  nothing else: no UPDATE, DELETE or TRUNCATE of history, no DDL, no trigger changes"
        )
        lines.extend(f"  revoked {what}" for what in self.revoked)
        return lines


def _excess(conn: Connection, role: str) -> list[str]:
    """Effective privileges of ``role`` (its own grants, PUBLIC's, those of roles it inherits
    from) on the audit tables and their schema, beyond :data:`APP_PRIVILEGES`."""
    rows = conn.execute(
        text(
            "SELECT c.relname, p.privilege FROM pg_class c "
            "CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege) "
            "WHERE c.relnamespace = (SELECT oid FROM pg_namespace "
            "WHERE nspname = current_schema()) AND c.relname = ANY(CAST(:tables AS text[])) "
            "AND has_table_privilege(CAST(:role AS name), c.oid, p.privilege) "
            "ORDER BY c.relname, p.privilege"
        ),
        {"privileges": list(_TABLE_PRIVILEGES), "tables": list(APP_PRIVILEGES), "role": role},
    ).all()
    found = [f"{row[1]} on {row[0]}" for row in rows if row[1] not in APP_PRIVILEGES[str(row[0])]]
    schema, create = conn.execute(
        text(
            "SELECT current_schema(), "
            "has_schema_privilege(CAST(:role AS name), current_schema(), 'CREATE')"
        ),
        {"role": role},
    ).one()
    if create:
        found.append(f"CREATE on schema {schema}")
    return found


@dataclass(frozen=True)
class _Held:
    role: set[tuple[str, str, bool]]  # (table, or "" for the schema; privilege; grantable)
    public: list[str]  # PUBLIC's privileges to take away, in words


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


class Privileges:
    """Grant and inspect the application role's privileges (mixed into the audit store)."""

    _dialect: str
    _where: str

    def _tx(self, *, write: bool) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # the audit store provides its transactions

    # ------------------------------------------------------------------------ inspection

    def role_access(self) -> RoleAccess | None:
        """What the connected role could do to the history; None on SQLite (no roles)."""
        if self._dialect != "postgresql":
            return None
        with self._tx(write=False) as conn:
            role, superuser = conn.execute(
                text(
                    "SELECT current_user, EXISTS (SELECT 1 FROM pg_roles s WHERE s.rolsuper "
                    "AND pg_has_role(current_user, s.oid, 'MEMBER'))"
                )
            ).one()
            owned: Sequence[Any] = (
                conn.execute(
                    text(
                        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = "
                        "(SELECT oid FROM pg_namespace WHERE nspname = current_schema()) "
                        "AND c.relname = ANY(CAST(:tables AS text[])) "
                        "AND pg_has_role(current_user, c.relowner, 'MEMBER') ORDER BY c.relname"
                    ),
                    {"tables": list(APP_PRIVILEGES)},
                )
                .scalars()
                .all()
            )
            owns = tuple(str(table) for table in owned)
            excess = tuple(_excess(conn, str(role)))
        return RoleAccess(str(role), bool(superuser), owns, excess)

    # ------------------------------------------------------------------------ the grant

    def grant_application_role(self, role: str) -> GrantReport:
        """Give ``role`` exactly :data:`APP_PRIVILEGES` on the audit tables of the connected
        schema and USAGE on the schema, and nothing else: in one transaction, revoke all it
        had there (and what PUBLIC had: every role gets PUBLIC's privileges), then grant.
        A second run finds nothing to change and changes nothing.

        Refuses (:class:`RoleRefused`) SQLite, a role that does not exist, a superuser, an
        owner of any audit table or of the schema, a role that may create roles, and the
        role connected as; :class:`AuditError` when the schema is missing or not migrated.
        """
        if self._dialect != "postgresql":
            raise RoleRefused(
                "SQLite has no roles: `canary db grant` is for PostgreSQL (protect a SQLite "
                "file with file permissions)"
            )
        unclassified = _unclassified()
        if unclassified:  # pragma: no cover - a new table without a decision; unit-tested
            raise AuditError(
                f"tables {', '.join(sorted(unclassified))} have no privileges decided for the "
                "application role (canary/audit/privileges.py)"
            )
        with self._tx(write=True) as conn:
            found = conn.execute(
                text(
                    "SELECT current_database(), n.nspname, n.oid FROM pg_namespace n "
                    "WHERE n.nspname = current_schema()"
                )
            ).first()
            if found is None:
                raise AuditError(
                    f"database {self._where}: the connection has no schema (its search_path "
                    "names none that exists); run `canary db upgrade` first"
                )
            database, schema, schema_oid = str(found[0]), str(found[1]), int(found[2])
            tables = self._tables(conn, schema_oid)
            role_oid = self._check_role(conn, role, schema_oid, tables)
            current = self._current(conn, role_oid, schema_oid, tables)
            wanted = {
                (table, privilege, False)
                for table, privileges in APP_PRIVILEGES.items()
                for privilege in privileges
            }
            wanted.add(("", "USAGE", False))  # "" is the schema
            granted = tuple((table, APP_PRIVILEGES[table]) for table in APP_PRIVILEGES)
            if current.role == wanted and not current.public:
                return GrantReport(role, schema, database, False, granted, ())
            revoked = [
                f"{privilege}{' WITH GRANT OPTION' if grantable else ''} on "
                f"{table or 'schema ' + schema} from {role}"
                for table, privilege, grantable in sorted(current.role - wanted)
            ] + [f"{what} from PUBLIC" for what in current.public]
            self._apply(conn, role, schema, tables)
            left = _excess(conn, role)
            if left:
                raise RoleRefused(
                    f"role {role} would still hold {', '.join(left)} through a role it is a "
                    "member of; revoke that membership (or those grants) and run again. "
                    "Nothing was changed"
                )
        return GrantReport(role, schema, database, True, granted, tuple(revoked))

    @staticmethod
    def _tables(conn: Connection, schema_oid: int) -> dict[str, int]:
        rows = conn.execute(
            text(
                "SELECT relname, oid FROM pg_class WHERE relnamespace = CAST(:schema AS oid) "
                "AND relkind IN ('r', 'p') AND relname = ANY(CAST(:tables AS text[]))"
            ),
            {"schema": schema_oid, "tables": list(APP_PRIVILEGES)},
        ).all()
        tables = {str(row[0]): int(row[1]) for row in rows}
        missing = [table for table in APP_PRIVILEGES if table not in tables]
        if missing:
            raise AuditError(
                f"the schema has no table {', '.join(missing)}: run `canary db upgrade` (as "
                "the owner role) before `canary db grant`"
            )
        return tables

    @staticmethod
    def _check_role(conn: Connection, role: str, schema_oid: int, tables: Mapping[str, int]) -> int:
        found = conn.execute(
            text(
                "SELECT r.oid, r.rolcreaterole, r.rolname IN (current_user, session_user), "
                "(SELECT string_agg(s.rolname, ', ' ORDER BY s.rolname) FROM pg_roles s "
                "WHERE s.rolsuper AND pg_has_role(r.oid, s.oid, 'MEMBER')) "
                "FROM pg_roles r WHERE r.rolname = :role"
            ),
            {"role": role},
        ).first()
        if found is None:
            raise RoleRefused(
                f"role {role} does not exist: create it first (as a superuser or a role with "
                f"CREATEROLE: CREATE ROLE {role} LOGIN PASSWORD '...')"
            )
        oid, createrole, connected, superusers = int(found[0]), found[1], found[2], found[3]
        if superusers:
            which = "a superuser" if superusers == role else f"a member of superuser {superusers}"
            raise RoleRefused(
                f"role {role} is {which}: a superuser can do anything, triggers or not; "
                "give the controller a role of its own"
            )
        if connected:
            raise RoleRefused(
                f"role {role} is the role this command is connected as: run `canary db grant` "
                "as the owner role, for the controller's application role"
            )
        owners = conn.execute(
            text(
                "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                "WHERE c.oid = ANY(CAST(:tables AS oid[])) "
                "AND pg_has_role(CAST(:role AS oid), c.relowner, 'MEMBER') "
                "ORDER BY c.relname"
            ),
            {"tables": list(tables.values()), "role": oid},
        ).all()
        if owners:
            owned = ", ".join(f"{table} (owner {owner})" for table, owner in owners)
            raise RoleRefused(
                f"role {role} owns {owned}, or is a member of the owner: an owner can disable "
                "the append-only triggers; the controller's role must own nothing"
            )
        schema_owner = conn.execute(
            text(
                "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                "WHERE oid = CAST(:schema AS oid) "
                "AND pg_has_role(CAST(:role AS oid), nspowner, 'MEMBER')"
            ),
            {"schema": schema_oid, "role": oid},
        ).first()
        if schema_owner is not None:
            raise RoleRefused(
                f"role {role} owns schema {schema_owner[0]} (owner {schema_owner[1]}), or is a "
                "member of its owner: a schema's owner can drop its tables"
            )
        if createrole:
            raise RoleRefused(
                f"role {role} has CREATEROLE: it could make itself a member of the owner role; "
                f"ALTER ROLE {role} NOCREATEROLE first"
            )
        return oid

    @staticmethod
    def _current(
        conn: Connection, role_oid: int, schema_oid: int, tables: Mapping[str, int]
    ) -> _Held:
        held: set[tuple[str, str, bool]] = set()
        public: list[str] = []
        # Table grants, then column grants (REVOKE ALL on the table removes those too), of
        # the role and of PUBLIC (grantee 0).
        for relname, grantee, privilege, grantable in conn.execute(
            text(
                "SELECT c.relname, a.grantee, a.privilege_type, a.is_grantable FROM pg_class c "
                "CROSS JOIN LATERAL aclexplode(c.relacl) a "
                "WHERE c.oid = ANY(CAST(:tables AS oid[])) "
                "AND a.grantee IN (CAST(:role AS oid), 0) "
                "UNION ALL "
                "SELECT c.relname || '.' || t.attname, a.grantee, a.privilege_type, "
                "a.is_grantable FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid "
                "CROSS JOIN LATERAL aclexplode(t.attacl) a "
                "WHERE c.oid = ANY(CAST(:tables AS oid[])) "
                "AND a.grantee IN (CAST(:role AS oid), 0)"
            ),
            {"tables": list(tables.values()), "role": role_oid},
        ):
            if grantee == 0:
                public.append(f"{privilege} on {relname}")
            else:
                held.add((str(relname), str(privilege), bool(grantable)))
        for grantee, privilege, grantable in conn.execute(
            text(
                "SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_namespace n "
                "CROSS JOIN LATERAL aclexplode(n.nspacl) a "
                "WHERE n.oid = CAST(:schema AS oid) AND a.grantee IN (CAST(:role AS oid), 0)"
            ),
            {"schema": schema_oid, "role": role_oid},
        ):
            if grantee != 0:
                held.add(("", str(privilege), bool(grantable)))
            elif privilege == "CREATE":
                public.append("CREATE on the schema")
        return _Held(held, public)

    @staticmethod
    def _apply(conn: Connection, role: str, schema: str, tables: Mapping[str, int]) -> None:
        who = _quote(conn, role)
        where = _quote(conn, schema)
        every = ", ".join(f"{where}.{_quote(conn, table)}" for table in tables)
        conn.execute(text(f"REVOKE ALL ON TABLE {every} FROM {who}, PUBLIC"))
        conn.execute(text(f"REVOKE ALL ON SCHEMA {where} FROM {who}"))
        conn.execute(text(f"REVOKE CREATE ON SCHEMA {where} FROM PUBLIC"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA {where} TO {who}"))
        for table, privileges in APP_PRIVILEGES.items():
            name = f"{where}.{_quote(conn, table)}"
            conn.execute(text(f"GRANT {', '.join(privileges)} ON TABLE {name} TO {who}"))
