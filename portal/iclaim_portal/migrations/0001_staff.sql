-- Staff of the one participant this portal serves, their sign-in means,
-- their sessions and what they did (the clearinghouse's audit log only knows
-- the participant).
CREATE TABLE staff (
    id bigserial PRIMARY KEY,
    username text NOT NULL UNIQUE,
    display_name text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'clerk', 'viewer')),
    password_hash text,
    webauthn_user_id bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE passkeys (
    credential_id bytea PRIMARY KEY,
    staff_id bigint NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    public_key bytea NOT NULL,
    sign_count bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- The cookie carries a random token; only its SHA-256 is stored, so a read of
-- this table does not yield usable sessions. Anonymous rows (staff_id NULL)
-- hold the CSRF token and WebAuthn challenge of a visitor not yet signed in.
CREATE TABLE sessions (
    token_sha256 bytea PRIMARY KEY,
    staff_id bigint REFERENCES staff (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    webauthn_challenge bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE staff_actions (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    staff_id bigint REFERENCES staff (id),
    action text NOT NULL,
    subject text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX staff_actions_at ON staff_actions (at DESC);
