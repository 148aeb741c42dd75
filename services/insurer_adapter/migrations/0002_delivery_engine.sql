-- The adapter becomes the hub's outbound side (docs/protocol.md §10): it no
-- longer decides claims, so it keeps no insurer's private key and no decision.
-- Deliveries are pushed to the insurer until taken or expired, and what
-- happened is reported to the router (a durable outbox on the same row).
DROP TABLE decisions;
DROP TABLE insurer_keys;

DROP INDEX deliveries_due;
ALTER TABLE deliveries
    ADD COLUMN state           text NOT NULL DEFAULT 'waiting'
                               CHECK (state IN ('waiting', 'taken', 'failed')),
    ADD COLUMN attempts        integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    ADD COLUMN taken_at        timestamptz,
    -- The report to the router: none yet, pending (outbox), done (acknowledged).
    ADD COLUMN report_state    text NOT NULL DEFAULT 'none'
                               CHECK (report_state IN ('none', 'pending', 'done')),
    ADD COLUMN report_kind     text CHECK (report_kind IN ('taken', 'expired', 'redriven')),
    ADD COLUMN report_next_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN report_attempts integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT deliveries_report_kind CHECK (report_state = 'none' OR report_kind IS NOT NULL);

-- Claims the simulated insurers had already decided are done; the rest wait
-- for a push like any new delivery.
UPDATE deliveries SET state = 'taken', taken_at = coalesce(decided_at, received_at),
                      report_state = 'done', report_kind = 'taken'
 WHERE status <> 'received';
UPDATE deliveries SET attempts = 0, last_error = NULL, lease_owner = NULL, lease_until = NULL;

ALTER TABLE deliveries
    DROP COLUMN status,
    DROP COLUMN due_at,
    DROP COLUMN process_attempts,
    DROP COLUMN decision_state,
    DROP COLUMN approved_amount_satang,
    DROP COLUMN reason_code,
    DROP COLUMN decision_envelope,
    DROP COLUMN decided_at;
ALTER TABLE deliveries ALTER COLUMN expires_at DROP DEFAULT;

-- lease_owner / lease_until (kept) guard the one activity a row can have at a
-- time: a push (state waiting, no pending report) or a report (report pending).
CREATE INDEX deliveries_push_due ON deliveries (insurer_code, next_attempt_at)
    WHERE state = 'waiting';
CREATE INDEX deliveries_report_due ON deliveries (report_next_at)
    WHERE report_state = 'pending';
CREATE INDEX deliveries_failed ON deliveries (insurer_code, received_at)
    WHERE state = 'failed';
