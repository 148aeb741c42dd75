-- Data minimisation (issue 13): once the insurer took a delivery nothing sends
-- its envelope again (a late hand-off of the same claim is recognised by its
-- SHA-256), so the adapter blanks it as it marks the delivery taken. The
-- backfill blanks what existing taken deliveries still hold. Waiting and
-- failed deliveries keep theirs: they are pushed, or redriven, from it.
UPDATE deliveries SET envelope = '' WHERE state = 'taken' AND envelope <> '';
