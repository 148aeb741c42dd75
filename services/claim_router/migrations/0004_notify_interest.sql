-- Issue 13: a change is announced (NOTIFY) only where a waiter on another
-- replica may hear it. Every NOTIFY costs PostgreSQL a commit in each listening
-- backend and takes the notification queue's lock at commit; a replica's own
-- waiters are told in process. Additive.
--
-- waiter: the replica whose SubmitClaim waits for this claim's decision; ''
-- when none waits; NULL for a claim stored by a router of an earlier release,
-- which is announced as before.
ALTER TABLE claims ADD COLUMN IF NOT EXISTS waiter text;

-- A wait on a claim that is not its submission's (WatchClaim, a resubmission
-- waiting for the decision), while it lasts: writers on other replicas announce
-- the claim's changes. A row left by a replica that died costs announcements
-- only; rows older than a day are removed when a router starts.
CREATE TABLE IF NOT EXISTS claim_interest (
    id bigserial PRIMARY KEY,
    transaction_id text NOT NULL,
    replica text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS claim_interest_by_claim ON claim_interest (transaction_id);
