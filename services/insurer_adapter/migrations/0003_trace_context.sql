-- Tracing (issue 11): the W3C traceparent of the DeliverClaim call that stored
-- a delivery, so its pushes (done later, by whichever replica leases the row)
-- join the claim's trace and carry it to the insurer. Additive; NULL for rows
-- stored before, or with tracing off.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS traceparent text;
