-- Expiry is the only way to remove data, and no session setting switches a guard off.
--
-- 0001 let a DELETE on entry_data through whenever the placeholder setting
-- iclaim_audit.expiring was 'on', and any role may set a placeholder. Now:
--
-- iclaim_audit_expirer : NOLOGIN role; no member but (when not a superuser)
--                        the migrating owner, never the writer. It owns
--                        expire_entries() (SECURITY DEFINER), so for the
--                        service it is current_user only inside that function;
--                        the entry_data trigger lets a DELETE through for it alone.
-- signing_keys         : never updated, deleted or truncated.
-- legal_holds          : placed (INSERT) and released once, stamped now();
--                        never deleted, re-scoped, backdated or un-released.
-- ingest_offsets       : the tailer's upsert only (same source, offset >= 0);
--                        never deleted or truncated. Not forward-only: a file
--                        copy-truncated in place keeps its identity when its
--                        first line is unchanged, and the tailer then restarts
--                        at 0 (re-read lines are dropped by event id).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iclaim_audit_expirer') THEN
        BEGIN
            CREATE ROLE iclaim_audit_expirer NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create role iclaim_audit_expirer'
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'have a superuser run: CREATE ROLE iclaim_audit_expirer NOLOGIN;'
                              || ' GRANT iclaim_audit_expirer TO <migrating role>';
        END;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION audit.guard_entry_data() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- For the service, current_user is iclaim_audit_expirer only inside
    -- expire_entries() (its owner, SECURITY DEFINER): the writer is no member.
    IF TG_OP = 'DELETE' AND current_user = 'iclaim_audit_expirer' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit log is append-only: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION audit.expire_entries(p_retention_days integer, p_limit integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' AS $$
DECLARE
    n integer;
    cutoff_us bigint;
BEGIN
    IF p_retention_days IS NULL OR p_retention_days < 90 OR p_retention_days > 730 THEN
        RAISE EXCEPTION 'retention must be 90..730 days, got %', p_retention_days;
    END IF;
    IF p_limit IS NULL OR p_limit < 0 THEN
        RAISE EXCEPTION 'limit must be >= 0, got %', p_limit;
    END IF;
    cutoff_us := (extract(epoch FROM now() - make_interval(days => p_retention_days)) * 1000000)::bigint;
    WITH doomed AS (
        SELECT d.leaf_index FROM audit.entry_data d
        WHERE d.occurred_at_us < cutoff_us
          AND NOT EXISTS (
              SELECT 1 FROM audit.legal_holds h
              WHERE h.released_at IS NULL
                AND ((h.scope = 'principal' AND h.value IN (d.origin_principal, d.destination))
                  OR (h.scope = 'transaction' AND d.transaction_id <> '' AND h.value = d.transaction_id)))
        ORDER BY d.leaf_index
        LIMIT p_limit
    ), gone AS (
        DELETE FROM audit.entry_data d USING doomed WHERE d.leaf_index = doomed.leaf_index
        RETURNING d.leaf_index
    )
    INSERT INTO audit.expired (leaf_index) SELECT leaf_index FROM gone;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION audit.expire_entries(integer, integer) FROM PUBLIC;

-- Exactly what the function body needs, run as its owner.
GRANT USAGE ON SCHEMA audit TO iclaim_audit_expirer;
GRANT SELECT, DELETE ON audit.entry_data TO iclaim_audit_expirer;
GRANT SELECT ON audit.legal_holds TO iclaim_audit_expirer;
GRANT INSERT ON audit.expired TO iclaim_audit_expirer;

DO $$
BEGIN
    -- A non-superuser may hand a function to a role only if it may SET ROLE to
    -- it and that role may create in the schema (granted for this one step).
    GRANT CREATE ON SCHEMA audit TO iclaim_audit_expirer;
    BEGIN
        ALTER FUNCTION audit.expire_entries(integer, integer) OWNER TO iclaim_audit_expirer;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'role % cannot make iclaim_audit_expirer own audit.expire_entries()', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'migrate as a superuser, or have one run: GRANT iclaim_audit_expirer TO '
                      || quote_ident(current_user);
    END;
    REVOKE CREATE ON SCHEMA audit FROM iclaim_audit_expirer;
END $$;

CREATE FUNCTION audit.guard_legal_hold() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.hold_id = OLD.hold_id AND NEW.scope = OLD.scope AND NEW.value = OLD.value
       AND NEW.reference = OLD.reference AND NEW.placed_at = OLD.placed_at
       AND (NEW.released_at IS NOT DISTINCT FROM OLD.released_at  -- a no-op (release again)
            OR (OLD.released_at IS NULL AND NEW.released_at = now()))  -- released now, not backdated
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'legal holds are placed and released, never changed: % on %.% refused',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION audit.guard_ingest_offset() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.source = OLD.source AND NEW.byte_offset >= 0 THEN
        NEW.updated_at := now();
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ingest offsets only move: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

ALTER TABLE audit.ingest_offsets ADD CONSTRAINT ingest_offsets_byte_offset_check CHECK (byte_offset >= 0);

CREATE TRIGGER signing_keys_append_only BEFORE UPDATE OR DELETE ON audit.signing_keys
    FOR EACH ROW EXECUTE FUNCTION audit.forbid_change();
CREATE TRIGGER signing_keys_no_truncate BEFORE TRUNCATE ON audit.signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit.forbid_change();
CREATE TRIGGER legal_holds_guard BEFORE UPDATE OR DELETE ON audit.legal_holds
    FOR EACH ROW EXECUTE FUNCTION audit.guard_legal_hold();
CREATE TRIGGER legal_holds_no_truncate BEFORE TRUNCATE ON audit.legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION audit.forbid_change();
CREATE TRIGGER ingest_offsets_guard BEFORE UPDATE OR DELETE ON audit.ingest_offsets
    FOR EACH ROW EXECUTE FUNCTION audit.guard_ingest_offset();
CREATE TRIGGER ingest_offsets_no_truncate BEFORE TRUNCATE ON audit.ingest_offsets
    FOR EACH STATEMENT EXECUTE FUNCTION audit.forbid_change();

-- The writer: re-granted in full (0001 skipped it when the role could not be
-- created), never DELETE or TRUNCATE; it may read which migrations are applied,
-- so a service that logs in as the writer can check the schema without owning it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iclaim_audit_writer') THEN
        BEGIN
            CREATE ROLE iclaim_audit_writer NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role iclaim_audit_writer; the service needs it outside dev';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iclaim_audit_writer') THEN
        REVOKE DELETE, TRUNCATE ON ALL TABLES IN SCHEMA audit FROM iclaim_audit_writer;
        GRANT USAGE ON SCHEMA audit TO iclaim_audit_writer;
        GRANT SELECT, INSERT ON audit.leaves, audit.entry_data, audit.nodes, audit.checkpoints,
            audit.signing_keys TO iclaim_audit_writer;
        GRANT SELECT ON audit.expired, audit.schema_migrations TO iclaim_audit_writer;
        GRANT SELECT, INSERT, UPDATE ON audit.legal_holds, audit.ingest_offsets TO iclaim_audit_writer;
        GRANT USAGE ON SEQUENCE audit.legal_holds_hold_id_seq TO iclaim_audit_writer;
        GRANT EXECUTE ON FUNCTION audit.expire_entries(integer, integer) TO iclaim_audit_writer;
    END IF;
END $$;
