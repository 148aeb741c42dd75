-- Who may call, with which keys. Signing secrets are sealed under the master key.
CREATE TABLE principals (
    code          text PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('hospital', 'insurer')),
    display_name  text NOT NULL,
    line          smallint,                      -- insurers: 1 life, 2 non-life
    delivery_mode text CHECK (delivery_mode IN ('simulated', 'pull')),
    available     boolean NOT NULL DEFAULT true,
    suspended     boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE signing_keys (
    principal_code text NOT NULL REFERENCES principals(code),
    key_id         text NOT NULL,
    secret_sealed  bytea NOT NULL,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_code, key_id)
);

CREATE TABLE encryption_keys (
    principal_code text NOT NULL REFERENCES principals(code),
    kid            text NOT NULL,
    public_jwk     jsonb NOT NULL,
    status         text NOT NULL DEFAULT 'current' CHECK (status IN ('current', 'previous', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_code, kid)
);
