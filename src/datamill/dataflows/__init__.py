"""Dataflows: the DMS object, its versioned configuration, triggers, notifications."""
