"""Limit state: one interface, kept in this process's memory or in Redis for a fleet."""
