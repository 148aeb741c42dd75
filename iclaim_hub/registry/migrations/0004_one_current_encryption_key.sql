-- Exactly one current encryption key per principal (issue 10, §5
-- `EncryptionKey.current`): clients seal new envelopes to it, so the database
-- must never hold two. Should concurrent writers ever have left two, the most
-- recently created stays current and the others become previous (still
-- accepted for the grace period).
UPDATE encryption_keys k SET status = 'previous'
 WHERE k.status = 'current'
   AND EXISTS (SELECT 1 FROM encryption_keys n
                WHERE n.principal_code = k.principal_code AND n.status = 'current'
                  AND (n.created_at, n.kid) > (k.created_at, k.kid));

CREATE UNIQUE INDEX encryption_keys_one_current
    ON encryption_keys (principal_code) WHERE status = 'current';
