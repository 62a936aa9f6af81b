"""The controller's HTTP API (FastAPI): health, readiness, metrics and the admission webhook.

Every replica serves it, not only the leader: the apiserver calls the webhook on whichever
replica answers, and probes and scrapes reach each pod. fastapi, starlette and uvicorn are
imported only here and in :mod:`canary.server` (an import-linter contract).
"""
