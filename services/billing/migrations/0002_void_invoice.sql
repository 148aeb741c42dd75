-- VoidInvoice (issue 10, §9): a hospital withdraws an invoice before any
-- payment on it; its claims leave it (invoice_claims.open = false) and may be
-- invoiced again. Creating an invoice posts no journal (the approval already
-- made the claims owed), so voiding one posts none either: the ledger is
-- untouched. When and why it was voided are kept with it.
ALTER TABLE invoices ADD COLUMN voided_at timestamptz;
ALTER TABLE invoices ADD COLUMN void_reason text;
ALTER TABLE invoices ADD CONSTRAINT invoices_void_stamped
  CHECK ((status = 'VOID') = (voided_at IS NOT NULL) AND (void_reason IS NULL OR voided_at IS NOT NULL));
CREATE INDEX invoices_pair_voided ON invoices (hospital_code, insurer_code, voided_at)
  WHERE voided_at IS NOT NULL;

-- A void invoice is final: nothing changes it afterwards (not its status, not its claims).
CREATE FUNCTION invoice_void_final() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'billing: invoice % is void and cannot change', OLD.invoice_id
    USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER invoices_void_final BEFORE UPDATE ON invoices
  FOR EACH ROW WHEN (OLD.status = 'VOID') EXECUTE FUNCTION invoice_void_final();

CREATE FUNCTION invoice_claims_void_final() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  IF NEW.open AND EXISTS (SELECT 1 FROM invoices i WHERE i.invoice_id = NEW.invoice_id AND i.status = 'VOID') THEN
    RAISE EXCEPTION 'billing: invoice % is void: its claims cannot be reopened', NEW.invoice_id
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER invoice_claims_void_final BEFORE UPDATE ON invoice_claims
  FOR EACH ROW EXECUTE FUNCTION invoice_claims_void_final();
