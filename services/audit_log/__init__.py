"""audit_log: the tamper-evident, append-only log of traffic data (issue 4)."""
