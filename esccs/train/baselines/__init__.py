"""Baseline recipes that need more than the shared stages: SPL, TTL, CycIT, GDL (see docs/method.md)."""
