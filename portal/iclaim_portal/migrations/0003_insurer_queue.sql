-- An insurer portal's work queue: each claim its puller took (PullClaims),
-- kept until a person decides it. The delivery is stored as received (protobuf
-- bytes) so the decision can be sealed to the hospital later; the claim itself
-- stays sealed here and is opened only when a reviewer looks at it.
CREATE TABLE queue (
    transaction_id text PRIMARY KEY,
    hospital_code text NOT NULL,
    claim_ref text NOT NULL,
    billed_satang bigint NOT NULL,
    delivery bytea NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'PENDING_REVIEW',
    approved_satang bigint NOT NULL DEFAULT 0,
    reason_code text NOT NULL DEFAULT '',
    decided_at timestamptz,
    decided_by bigint REFERENCES staff (id)
);
CREATE INDEX queue_open ON queue (taken_at) WHERE decided_at IS NULL;
