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

-- During a rolling upgrade an adapter of the release before 0004 may still
-- mark a delivery taken without blanking its envelope, after the walk has
-- passed it. This makes that write blank it too; the WHEN clause keeps it off
-- the path of this release's writes, which blank it themselves.
CREATE OR REPLACE FUNCTION blank_taken_envelope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.envelope := '';
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS deliveries_taken_envelope ON deliveries;
CREATE TRIGGER deliveries_taken_envelope BEFORE INSERT OR UPDATE ON deliveries
    FOR EACH ROW WHEN (NEW.state = 'taken' AND NEW.envelope <> '')
    EXECUTE FUNCTION blank_taken_envelope();
