-- Tracing (issue 11): the W3C traceparent of the call that stored a claim or an
-- outbox event, so that work done later from the row (a hand-off retried by the
-- poller, a decision, the relay to billing) joins the claim's trace. Additive;
-- NULL for rows stored before, or with tracing off.
ALTER TABLE claims ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;
