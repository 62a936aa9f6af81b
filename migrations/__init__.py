"""The Alembic migrations of the audit database.

They live in the repository's top-level ``migrations/`` folder and are installed as the
``canary.migrations`` package, where ``canary.audit.store`` finds them.
"""
