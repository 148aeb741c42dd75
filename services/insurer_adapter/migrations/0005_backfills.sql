-- Backfills left to housekeeping (iclaim_hub/common/backfill.py): per
-- backfill, a cursor over its table's primary key, done once it reaches the
-- end. Registered: blanking the envelope of deliveries taken before 0004, as
-- the adapter now does when it marks one taken.
CREATE TABLE IF NOT EXISTS backfills (
    name      text PRIMARY KEY,
    after_key text NOT NULL DEFAULT '',
    done_at   timestamptz
);
INSERT INTO backfills (name) VALUES ('adapter_taken_envelopes') ON CONFLICT DO NOTHING;
