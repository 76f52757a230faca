"""Per-customer fair-use limits: token buckets, concurrency, calendar quotas."""
