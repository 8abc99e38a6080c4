"""Persistence: LevelDB block store, indexes and the authenticated state."""
