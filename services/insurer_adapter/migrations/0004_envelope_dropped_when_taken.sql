-- Data minimisation (issue 13): once the insurer took a delivery nothing sends
-- its envelope again (a late hand-off of the same claim is recognised by its
-- SHA-256), so the adapter blanks it as it marks the delivery taken. Waiting
-- and failed deliveries keep theirs: they are pushed, or redriven, from it.
-- What deliveries taken before still hold is blanked by housekeeping in
-- batches (0005), not here: one UPDATE over a large table would outlast
-- start-up.
COMMENT ON COLUMN deliveries.envelope IS
    'The claim''s JWE; blanked once the delivery is taken (kept while waiting or failed).';
