-- Issue 13: a new pull claim is announced (NOTIFY) only when another replica
-- has polled for its insurer lately; this replica's own polls are woken in
-- process. A replica notes here that it polls for an insurer, at most every
-- 30 s while it does (seen_at); a row not renewed for 90 s is ignored. Additive.
CREATE TABLE IF NOT EXISTS pull_pollers (
    insurer_code text NOT NULL,
    replica text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (insurer_code, replica)
);
