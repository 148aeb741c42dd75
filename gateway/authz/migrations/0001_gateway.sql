-- Nonce-store loss detection (PROTOCOL.md §3): the generation of the marker
-- key the gateway keeps in Redis. If this says a marker existed and Redis has
-- none, Redis lost its nonces and the gateway refuses a window of requests.
CREATE TABLE nonce_store_marker (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation    text NOT NULL,
    recovered_at  timestamptz,                -- last recovery from a loss (R)
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE nonce_store_losses (
    generation          text PRIMARY KEY,     -- marker generation after recovery
    previous_generation text NOT NULL,
    recovered_at        timestamptz NOT NULL
);
