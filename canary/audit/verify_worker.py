"""A worker process of a parallel verification (``python -m canary.audit.verify_worker``,
started by :func:`canary.audit.verify_postgres.prove_in_parallel`; it talks JSON lines on its
standard input and output)."""

from __future__ import annotations

import sys

from canary.audit.verify_postgres import serve_worker

if __name__ == "__main__":
    serve_worker(sys.stdin, sys.stdout)
