-- Encryption-key rotation (issue 3): a `previous` key stays accepted only for a
-- grace period (ICLAIM_KEY_GRACE_S, read by the router) counted from the moment
-- it stopped being current. The trigger stamps that moment for every writer.
ALTER TABLE encryption_keys ADD COLUMN previous_since timestamptz;
UPDATE encryption_keys SET previous_since = now() WHERE status = 'previous';

CREATE FUNCTION encryption_keys_stamp_previous_since() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'previous' THEN
        NEW.previous_since := NULL;
    ELSIF TG_OP = 'INSERT' THEN
        NEW.previous_since := coalesce(NEW.previous_since, now());
    ELSIF OLD.status <> 'previous' THEN
        NEW.previous_since := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER encryption_keys_stamp_previous_since
    BEFORE INSERT OR UPDATE ON encryption_keys
    FOR EACH ROW EXECUTE FUNCTION encryption_keys_stamp_previous_since();
