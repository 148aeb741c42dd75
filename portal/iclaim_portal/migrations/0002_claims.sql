-- What this portal has seen of its claims: each state observed (WatchClaim,
-- GetClaim, the insurer's pull), for the timeline and the reports. The
-- clearinghouse stays the record; these rows are the portal's view of it.
CREATE TABLE claim_events (
    id bigserial PRIMARY KEY,
    transaction_id text NOT NULL,
    state text NOT NULL,
    observed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transaction_id, state)
);
