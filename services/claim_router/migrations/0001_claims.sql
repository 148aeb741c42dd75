-- Claims as the router sees them: routing header and opaque envelopes only.
CREATE TABLE claims (
    transaction_id         text PRIMARY KEY,
    hospital_code          text NOT NULL,
    insurer_code           text NOT NULL,
    claim_ref              text NOT NULL,
    state                  smallint NOT NULL,
    billed_amount_satang   bigint NOT NULL CHECK (billed_amount_satang >= 0),
    approved_amount_satang bigint NOT NULL DEFAULT 0 CHECK (approved_amount_satang >= 0),
    envelope               text NOT NULL,
    envelope_sha256        text NOT NULL,
    decision_envelope      text NOT NULL DEFAULT '',
    status_reason          text NOT NULL DEFAULT '',
    delivery_mode          text NOT NULL CHECK (delivery_mode IN ('simulated', 'pull')),
    submitted_at           timestamptz NOT NULL DEFAULT now(),
    decided_at             timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- push delivery (durable outbox): due while delivered_at IS NULL
    delivered_at           timestamptz,
    delivery_attempts      integer NOT NULL DEFAULT 0,
    next_attempt_at        timestamptz NOT NULL DEFAULT now(),
    -- pull delivery: offered again once the lease has passed
    lease_until            timestamptz,
    UNIQUE (hospital_code, claim_ref)
);

CREATE INDEX claims_push_due ON claims (next_attempt_at)
    WHERE delivered_at IS NULL AND delivery_mode = 'simulated';
CREATE INDEX claims_pull_open ON claims (insurer_code, submitted_at)
    WHERE delivery_mode = 'pull' AND state IN (1, 2);
CREATE INDEX claims_by_hospital ON claims (hospital_code, submitted_at, transaction_id);

-- Events for other services (audit trail, billing), written in the same
-- transaction as the state change and relayed until acknowledged.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL CHECK (topic IN ('audit', 'billing')),
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (topic, id) WHERE sent_at IS NULL;
