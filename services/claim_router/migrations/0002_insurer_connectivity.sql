-- Insurer connectivity (issue 9, docs/protocol.md §10). Push claims go to
-- grpc or webhook insurers through the delivery layer (insurer_adapter), which
-- reports back when the insurer took a claim.
ALTER TABLE claims DROP CONSTRAINT claims_delivery_mode_check;
UPDATE claims SET delivery_mode = 'grpc' WHERE delivery_mode = 'simulated';
ALTER TABLE claims ADD CONSTRAINT claims_delivery_mode_check
    CHECK (delivery_mode IN ('pull', 'grpc', 'webhook'));

-- delivered_at now means "left the router": handed to the delivery layer
-- (push) or first leased (pull). taken_at: when the router learned the insurer
-- took the claim (push: ReportTaken; pull: first lease). Before this change a
-- push claim was taken when handed off, so that is what old rows get.
ALTER TABLE claims ADD COLUMN taken_at timestamptz;
UPDATE claims SET taken_at = delivered_at WHERE delivered_at IS NOT NULL;

DROP INDEX claims_push_due;
CREATE INDEX claims_push_due ON claims (next_attempt_at)
    WHERE delivered_at IS NULL AND delivery_mode IN ('grpc', 'webhook');
