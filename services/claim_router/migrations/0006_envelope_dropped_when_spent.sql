-- Data minimisation (issue 13): a claim's envelope, ciphertext of patient
-- data, is kept only while a delivery may still send it; once the claim is
-- decided, cancelled or paid the router blanks it in the same write. Its size
-- stays here for the audit entries of later changes (NULL: a row stored
-- before, whose size is octet_length(envelope)). Additive; what finished
-- claims stored before still hold is blanked by housekeeping in batches
-- (0007), not here: one UPDATE over a large table would outlast start-up.
ALTER TABLE claims ADD COLUMN IF NOT EXISTS envelope_bytes integer;
