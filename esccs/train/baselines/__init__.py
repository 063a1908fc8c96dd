"""Baseline recipes that need more than the shared stages: SPL, TTL, CycIT, GDL (see ../shared/method.md)."""
