-- Audit log (schema audit). Traffic data only. Append-only by privileges and triggers.
--
-- leaves      : one immutable row per entry (position, event id, leaf hash). Never
--               updated or deleted, even by retention: old checkpoints and proofs
--               keep verifying.
-- entry_data  : the entry's traffic fields. Never updated; deleted only by
--               expire_entries() (retention), which records the expiry in `expired`.
-- nodes       : perfect Merkle subtree hashes (level >= 1) written with the leaves,
--               so roots and proofs need O(log n) reads.
-- checkpoints : signed tree heads (C2SP tlog-checkpoint notes).

CREATE TABLE leaves (
    leaf_index  bigint PRIMARY KEY CHECK (leaf_index >= 0),
    event_id    text NOT NULL UNIQUE,
    leaf_hash   bytea NOT NULL CHECK (octet_length(leaf_hash) = 32),
    appended_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entry_data (
    leaf_index       bigint PRIMARY KEY REFERENCES leaves (leaf_index),
    kind             text NOT NULL,
    origin_principal text NOT NULL,
    source_address   text NOT NULL,
    destination      text NOT NULL,
    route            text NOT NULL,
    occurred_at_us   bigint NOT NULL,
    size_bytes       bigint NOT NULL,
    duration_ms      bigint NOT NULL,
    service_type     text NOT NULL,
    outcome_code     text NOT NULL,
    outcome_reason   text NOT NULL,
    transaction_id   text NOT NULL,
    envelope_sha256  text NOT NULL
);
CREATE INDEX entry_data_origin_idx ON entry_data (origin_principal, leaf_index);
CREATE INDEX entry_data_destination_idx ON entry_data (destination, leaf_index);
CREATE INDEX entry_data_transaction_idx ON entry_data (transaction_id) WHERE transaction_id <> '';
CREATE INDEX entry_data_occurred_idx ON entry_data (occurred_at_us);

CREATE TABLE nodes (
    level smallint NOT NULL CHECK (level >= 1),
    idx   bigint NOT NULL CHECK (idx >= 0),
    hash  bytea NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE expired (
    leaf_index bigint PRIMARY KEY REFERENCES leaves (leaf_index),
    expired_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkpoints (
    tree_size bigint PRIMARY KEY CHECK (tree_size >= 0),
    root_hash bytea NOT NULL CHECK (octet_length(root_hash) = 32),
    signed_at timestamptz NOT NULL,
    note      text NOT NULL
);

CREATE TABLE signing_keys (
    key_name       text PRIMARY KEY,
    public_key     bytea NOT NULL,
    private_sealed bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE legal_holds (
    hold_id     bigserial PRIMARY KEY,
    scope       text NOT NULL CHECK (scope IN ('principal', 'transaction')),
    value       text NOT NULL,
    reference   text NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE INDEX legal_holds_active_idx ON legal_holds (scope, value) WHERE released_at IS NULL;

-- Where the access-log tailer is; updated in the same transaction as the entries.
CREATE TABLE ingest_offsets (
    source      text PRIMARY KEY,
    file_id     text NOT NULL,
    byte_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Triggers: refuse changes even to roles that hold table privileges (owner).
CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION guard_entry_data() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only expire_entries() sets this (transaction-local); UPDATE is never allowed.
    IF TG_OP = 'DELETE' AND current_setting('iclaim_audit.expiring', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit log is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER leaves_append_only BEFORE UPDATE OR DELETE ON leaves
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER leaves_no_truncate BEFORE TRUNCATE ON leaves
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER nodes_append_only BEFORE UPDATE OR DELETE ON nodes
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER expired_append_only BEFORE UPDATE OR DELETE ON expired
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER expired_no_truncate BEFORE TRUNCATE ON expired
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER entry_data_guard BEFORE UPDATE OR DELETE ON entry_data
    FOR EACH ROW EXECUTE FUNCTION guard_entry_data();
CREATE TRIGGER entry_data_no_truncate BEFORE TRUNCATE ON entry_data
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Retention: the only path that removes entry data. Runs as the schema owner
-- (SECURITY DEFINER); the writer role may call it but holds no DELETE itself.
-- The period is bounded here too (90 days .. 2 years), so a compromised
-- writer cannot wipe recent traffic data.
CREATE FUNCTION expire_entries(p_retention_days integer, p_limit integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = audit, pg_temp AS $$
DECLARE
    n integer;
    cutoff_us bigint;
BEGIN
    IF p_retention_days < 90 OR p_retention_days > 730 THEN
        RAISE EXCEPTION 'retention must be 90..730 days, got %', p_retention_days;
    END IF;
    cutoff_us := (extract(epoch FROM now() - make_interval(days => p_retention_days)) * 1000000)::bigint;
    PERFORM set_config('iclaim_audit.expiring', 'on', true);
    WITH doomed AS (
        SELECT d.leaf_index FROM entry_data d
        WHERE d.occurred_at_us < cutoff_us
          AND NOT EXISTS (
              SELECT 1 FROM legal_holds h
              WHERE h.released_at IS NULL
                AND ((h.scope = 'principal' AND h.value IN (d.origin_principal, d.destination))
                  OR (h.scope = 'transaction' AND d.transaction_id <> '' AND h.value = d.transaction_id)))
        ORDER BY d.leaf_index
        LIMIT p_limit
    ), gone AS (
        DELETE FROM entry_data d USING doomed WHERE d.leaf_index = doomed.leaf_index
        RETURNING d.leaf_index
    )
    INSERT INTO expired (leaf_index) SELECT leaf_index FROM gone;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('iclaim_audit.expiring', 'off', true);
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION expire_entries(integer, integer) FROM PUBLIC;

-- The service's own role: INSERT/SELECT on the log, nothing that rewrites it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iclaim_audit_writer') THEN
        BEGIN
            CREATE ROLE iclaim_audit_writer NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role iclaim_audit_writer; relying on triggers';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iclaim_audit_writer') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA audit TO iclaim_audit_writer';
        EXECUTE 'GRANT SELECT, INSERT ON leaves, entry_data, nodes, checkpoints, signing_keys'
             || ' TO iclaim_audit_writer';
        EXECUTE 'GRANT SELECT ON expired TO iclaim_audit_writer';
        EXECUTE 'GRANT SELECT, INSERT, UPDATE ON legal_holds, ingest_offsets TO iclaim_audit_writer';
        EXECUTE 'GRANT USAGE ON SEQUENCE legal_holds_hold_id_seq TO iclaim_audit_writer';
        EXECUTE 'GRANT EXECUTE ON FUNCTION expire_entries(integer, integer) TO iclaim_audit_writer';
    END IF;
END $$;
