-- Backfills left to housekeeping (iclaim_hub/common/backfill.py): per
-- backfill, a cursor over its table's primary key, done once it reaches the
-- end. Registered: blanking the envelope of claims that finished (decided,
-- cancelled, paid) before 0006, as the router now does when they finish.
CREATE TABLE IF NOT EXISTS backfills (
    name      text PRIMARY KEY,
    after_key text NOT NULL DEFAULT '',
    done_at   timestamptz
);
INSERT INTO backfills (name) VALUES ('router_spent_envelopes') ON CONFLICT DO NOTHING;
