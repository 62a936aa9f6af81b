"""Canary analysis: metric providers, checks and verdicts (pure, apart from providers)."""
