"""Test-bed helpers that run real services (PostgreSQL) in private sandboxes."""
