-- Key lifecycle (issue 3): at most two active signing keys per principal (for
-- rotation), enforced here so every writer obeys it; optional mutual TLS per
-- principal; when a key was revoked.
ALTER TABLE principals ADD COLUMN require_mtls boolean NOT NULL DEFAULT false;
ALTER TABLE signing_keys ADD COLUMN revoked_at timestamptz;

CREATE FUNCTION signing_keys_at_most_two_active() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'active' THEN
        RETURN NEW;
    END IF;
    -- Serialise writers per principal so two concurrent adds cannot both pass.
    PERFORM 1 FROM registry.principals WHERE code = NEW.principal_code FOR UPDATE;
    IF (SELECT count(*) FROM registry.signing_keys
        WHERE principal_code = NEW.principal_code AND status = 'active'
          AND key_id <> NEW.key_id) >= 2 THEN
        RAISE EXCEPTION 'principal % already has two active signing keys', NEW.principal_code
            USING ERRCODE = 'check_violation', CONSTRAINT = 'signing_keys_at_most_two_active';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER signing_keys_at_most_two_active
    BEFORE INSERT OR UPDATE OF status ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION signing_keys_at_most_two_active();
