"""Approval gates: change requests, signed webhooks and their verification."""
