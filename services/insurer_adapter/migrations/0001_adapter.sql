-- Simulated insurers: their private keys (sealed), claims delivered to them,
-- and the decisions they owe the router (an outbox, sent in seq order).
CREATE TABLE insurer_keys (
    insurer_code        text NOT NULL,
    kid                 text NOT NULL,
    private_jwk_sealed  bytea NOT NULL,      -- SecretBox, context bound to insurer + kid
    public_jwk          jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (insurer_code, kid)
);

CREATE TABLE deliveries (
    transaction_id         text PRIMARY KEY,
    insurer_code           text NOT NULL,
    hospital_code          text NOT NULL,
    claim_ref              text NOT NULL,
    billed_amount_satang   bigint NOT NULL CHECK (billed_amount_satang >= 0),
    envelope               text NOT NULL,
    envelope_sha256        text NOT NULL,
    submitted_at           timestamptz,
    received_at            timestamptz NOT NULL DEFAULT now(),
    delivery_count         integer NOT NULL DEFAULT 1,    -- DeliverClaim calls seen
    last_delivered_at      timestamptz NOT NULL DEFAULT now(),
    -- received -> decided (decisions computed, in the outbox) -> notified | failed
    status                 text NOT NULL DEFAULT 'received'
                           CHECK (status IN ('received', 'decided', 'notified', 'failed')),
    due_at                 timestamptz NOT NULL DEFAULT now(),
    process_attempts       integer NOT NULL DEFAULT 0,
    lease_owner            text,
    lease_until            timestamptz,
    last_error             text,
    -- the final decision, also kept here for inspection
    decision_state         text,
    approved_amount_satang bigint,
    reason_code            text,
    decision_envelope      text,
    decided_at             timestamptz
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'received';

CREATE TABLE decisions (
    transaction_id         text NOT NULL REFERENCES deliveries (transaction_id),
    seq                    smallint NOT NULL,
    state                  text NOT NULL,
    approved_amount_satang bigint NOT NULL,
    reason_code            text NOT NULL,
    decision_envelope      text NOT NULL,   -- sealed once; every resend is byte-identical
    final                  boolean NOT NULL,
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'sent', 'failed')),
    due_at                 timestamptz NOT NULL,   -- durable delay (REVIEW, SLOW) and retry backoff
    attempts               integer NOT NULL DEFAULT 0,
    lease_owner            text,
    lease_until            timestamptz,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    sent_at                timestamptz,
    PRIMARY KEY (transaction_id, seq)
);
CREATE INDEX decisions_due ON decisions (due_at) WHERE status = 'pending';
