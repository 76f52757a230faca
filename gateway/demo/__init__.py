"""A small "product API" to put fairgate in front of: JSON under /api/v1, HTML under /portal."""
