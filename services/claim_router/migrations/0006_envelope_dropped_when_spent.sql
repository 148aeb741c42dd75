-- Data minimisation (issue 13): a claim's envelope, ciphertext of patient
-- data, is kept only while a delivery may still send it; once the claim is
-- decided, cancelled or paid the router blanks it in the same write. Its size
-- stays here for the audit entries of later changes (NULL: a row stored
-- before, whose size is octet_length(envelope)). Additive; the backfill
-- blanks what existing finished claims still hold.
ALTER TABLE claims ADD COLUMN IF NOT EXISTS envelope_bytes integer;
UPDATE claims SET envelope_bytes = octet_length(envelope), envelope = ''
    WHERE state IN (4, 5, 6, 7, 9) AND envelope <> '';
