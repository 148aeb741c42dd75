-- Insurer connectivity (issue 9, docs/protocol.md §10): how claims reach each
-- insurer, the endpoint key the hub signs pushes with, and each insurer's health.

-- Delivery modes: the sandbox insurers left the hub, so 'simulated' becomes a
-- gRPC push (the sandbox serves them over InsurerEndpoint).
ALTER TABLE principals DROP CONSTRAINT principals_delivery_mode_check;
UPDATE principals SET delivery_mode = 'grpc' WHERE delivery_mode = 'simulated';
ALTER TABLE principals ADD CONSTRAINT principals_delivery_mode_check
    CHECK (delivery_mode IN ('pull', 'grpc', 'webhook'));

-- Where pushes go (host:port for grpc, an https:// URL for webhook, '' for
-- pull), the CA that signs the insurer's server certificate ('' = system
-- roots; a public certificate only) and whether it asks for mutual TLS.
ALTER TABLE principals
    ADD COLUMN endpoint        text    NOT NULL DEFAULT '',
    ADD COLUMN endpoint_ca_pem text    NOT NULL DEFAULT '',
    ADD COLUMN endpoint_mtls   boolean NOT NULL DEFAULT false;

-- The shared secret the hub signs pushes with (§10.1), sealed like signing
-- secrets. Key ids are unique across insurers, so one receiver serving several
-- insurers can tell them apart by x-iclaim-key-id. Rotation revokes the old key
-- at once: at most one un-revoked key per insurer.
CREATE TABLE endpoint_keys (
    key_id        text PRIMARY KEY,
    insurer_code  text NOT NULL REFERENCES principals(code),
    secret_sealed bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE UNIQUE INDEX endpoint_keys_one_current ON endpoint_keys (insurer_code) WHERE revoked_at IS NULL;

-- §10.5: push health is written by the delivery layer (insurer_adapter),
-- last_pull_at by the router when a pull insurer calls PullClaims.
CREATE TABLE insurer_health (
    insurer_code         text PRIMARY KEY REFERENCES principals(code),
    health               text NOT NULL DEFAULT 'unknown'
                         CHECK (health IN ('unknown', 'healthy', 'degraded', 'down')),
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_pull_at         timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
