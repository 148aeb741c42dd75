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

-- During a rolling upgrade a router of the release before 0006 may still
-- finish a claim without blanking its envelope, after the walk has passed it.
-- This makes that write blank it too. The WHEN clause keeps it off the path of
-- this release's writes, which blank the envelope themselves (_write_rows).
CREATE OR REPLACE FUNCTION blank_spent_envelope() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.envelope_bytes := coalesce(NEW.envelope_bytes, octet_length(NEW.envelope));
    NEW.envelope := '';
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS claims_spent_envelope ON claims;
CREATE TRIGGER claims_spent_envelope BEFORE INSERT OR UPDATE ON claims
    FOR EACH ROW WHEN (NEW.state IN (4, 5, 6, 7, 9) AND NEW.envelope <> '')
    EXECUTE FUNCTION blank_spent_envelope();
