-- Double-entry ledger for billing and settlement. Amounts are integer satang;
-- a journal line is signed (+ debit, - credit). Posted journals and lines are
-- immutable: corrections are new, reversing journals.

CREATE TABLE accounts (
  id            bigserial PRIMARY KEY,
  hospital_code text   NOT NULL,
  insurer_code  text   NOT NULL,
  -- receivable (asset: what the insurer owes), overpayment (liability: owed
  -- back to the insurer), revenue, cash, adj_<CAS group>, plb_<PLB code>
  kind          text   NOT NULL,
  -- Cached sum of this account's lines, kept by a trigger below.
  balance_satang numeric(22, 0) NOT NULL DEFAULT 0,
  UNIQUE (hospital_code, insurer_code, kind)
);

CREATE TABLE journals (
  id            bigserial PRIMARY KEY,
  idem_key      text        NOT NULL UNIQUE,
  content_sha256 text       NOT NULL,
  kind          text        NOT NULL CHECK (kind IN ('APPROVAL', 'PAYMENT', 'ADJUSTMENT', 'REVERSAL')),
  hospital_code text        NOT NULL,
  insurer_code  text        NOT NULL,
  reference     text        NOT NULL,
  description   text        NOT NULL,
  effective_at  timestamptz NOT NULL,
  recorded_at   timestamptz NOT NULL DEFAULT now(),
  reverses      bigint      UNIQUE REFERENCES journals (id),
  created_txid  bigint      NOT NULL DEFAULT txid_current()
);
CREATE INDEX journals_pair_time ON journals (hospital_code, insurer_code, effective_at, id);

CREATE TABLE journal_lines (
  id             bigserial PRIMARY KEY,
  journal_id     bigint NOT NULL REFERENCES journals (id),
  account_id     bigint NOT NULL REFERENCES accounts (id),
  transaction_id text,
  amount_satang  bigint NOT NULL
    CHECK (amount_satang <> 0 AND amount_satang BETWEEN -1000000000000000 AND 1000000000000000)
);
CREATE INDEX journal_lines_journal ON journal_lines (journal_id);
CREATE INDEX journal_lines_account ON journal_lines (account_id);
CREATE INDEX journal_lines_claim ON journal_lines (transaction_id) WHERE transaction_id IS NOT NULL;

-- Immutability: no UPDATE, DELETE or TRUNCATE of posted entries, ever.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  RAISE EXCEPTION 'billing: % on % refused: posted entries are immutable; post a reversal',
    TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER journals_immutable BEFORE UPDATE OR DELETE ON journals
  FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journals_no_truncate BEFORE TRUNCATE ON journals
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_lines_immutable BEFORE UPDATE OR DELETE ON journal_lines
  FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_lines_no_truncate BEFORE TRUNCATE ON journal_lines
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Lines join only a journal created by the same transaction: a posted journal
-- cannot gain lines later.
CREATE FUNCTION line_same_txn() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM journals j WHERE j.id = NEW.journal_id
                 AND j.created_txid = txid_current()) THEN
    RAISE EXCEPTION 'billing: journal % is already posted', NEW.journal_id
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER journal_lines_same_txn BEFORE INSERT ON journal_lines
  FOR EACH ROW EXECUTE FUNCTION line_same_txn();

-- Every journal balances (debits = credits) when its transaction commits.
CREATE FUNCTION journal_balanced() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
DECLARE total numeric; n bigint;
BEGIN
  SELECT coalesce(sum(amount_satang), 0), count(*) INTO total, n
    FROM journal_lines WHERE journal_id = NEW.id;
  IF total <> 0 OR n < 2 THEN
    RAISE EXCEPTION 'billing: journal % unbalanced (sum %, % lines)', NEW.id, total, n
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER journals_balanced AFTER INSERT ON journals
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_balanced();

-- Cached balances move with the lines, in the same statement.
CREATE FUNCTION apply_lines() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  UPDATE accounts a SET balance_satang = a.balance_satang + d.delta
    FROM (SELECT account_id, sum(amount_satang) AS delta FROM new_lines
          GROUP BY account_id ORDER BY account_id) d
   WHERE a.id = d.account_id;
  RETURN NULL;
END $$;
CREATE TRIGGER journal_lines_apply AFTER INSERT ON journal_lines
  REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION apply_lines();

-- Balances may only change through lines.
CREATE FUNCTION account_balance_guard() RETURNS trigger LANGUAGE plpgsql SET search_path = billing, pg_temp AS $$
BEGIN
  IF pg_trigger_depth() < 2 AND NEW.balance_satang IS DISTINCT FROM OLD.balance_satang THEN
    RAISE EXCEPTION 'billing: account balances change only by posting journals'
      USING ERRCODE = 'restrict_violation';
  END IF;
  IF NEW.hospital_code <> OLD.hospital_code OR NEW.insurer_code <> OLD.insurer_code
     OR NEW.kind <> OLD.kind THEN
    RAISE EXCEPTION 'billing: accounts are not renamed' USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER accounts_guard BEFORE UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION account_balance_guard();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
  FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Claims the insurer decided; approved ones are receivables. settled_satang is
-- what payments took off (never more than approved: the excess is overpayment).
CREATE TABLE claims (
  transaction_id  text PRIMARY KEY,
  hospital_code   text        NOT NULL,
  insurer_code    text        NOT NULL,
  state           text        NOT NULL CHECK (state IN ('APPROVED', 'PARTIALLY_APPROVED', 'DENIED')),
  approved_satang bigint      NOT NULL CHECK (approved_satang BETWEEN 0 AND 1000000000000000),
  settled_satang  bigint      NOT NULL DEFAULT 0,
  decided_at      timestamptz NOT NULL,
  recorded_at     timestamptz NOT NULL DEFAULT now(),
  CHECK (settled_satang BETWEEN 0 AND approved_satang)
);
CREATE INDEX claims_pair ON claims (hospital_code, insurer_code);

CREATE TABLE credit_terms (
  hospital_code text NOT NULL,
  insurer_code  text NOT NULL,
  days          integer NOT NULL CHECK (days BETWEEN 0 AND 365),
  PRIMARY KEY (hospital_code, insurer_code)
);

CREATE TABLE invoices (
  invoice_id      text PRIMARY KEY,
  invoice_ref     text        NOT NULL,
  hospital_code   text        NOT NULL,
  insurer_code    text        NOT NULL,
  request_sha256  text        NOT NULL,
  total_satang    bigint      NOT NULL CHECK (total_satang BETWEEN 0 AND 1000000000000000),
  -- Stored status without OVERDUE, which is derived from due_date at read time.
  status          text        NOT NULL
    CHECK (status IN ('SUBMITTED', 'ACKNOWLEDGED', 'PARTIALLY_PAID', 'PAID', 'VOID')),
  submitted_at    timestamptz NOT NULL,
  acknowledged_at timestamptz,
  due_date        date,
  paid_at         timestamptz,
  UNIQUE (hospital_code, invoice_ref)
);
CREATE INDEX invoices_pair ON invoices (hospital_code, insurer_code, submitted_at);
CREATE INDEX invoices_insurer ON invoices (insurer_code, submitted_at);

CREATE TABLE invoice_claims (
  invoice_id     text    NOT NULL REFERENCES invoices (invoice_id),
  transaction_id text    NOT NULL REFERENCES claims (transaction_id),
  position       integer NOT NULL,
  open           boolean NOT NULL DEFAULT true,
  PRIMARY KEY (invoice_id, transaction_id)
);
-- A claim is on at most one open invoice.
CREATE UNIQUE INDEX invoice_claims_one_open ON invoice_claims (transaction_id) WHERE open;

CREATE TABLE payments (
  payment_id     text PRIMARY KEY,
  insurer_code   text        NOT NULL,
  trace_no       text        NOT NULL,
  request_sha256 text        NOT NULL,
  paid_at        timestamptz NOT NULL,
  total_satang   bigint      NOT NULL,
  -- The posted content as canonical JSON (lines, provider adjustments).
  body           jsonb       NOT NULL,
  hospital_codes text[]      NOT NULL,
  recorded_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (insurer_code, trace_no)
);
CREATE TRIGGER payments_immutable BEFORE UPDATE OR DELETE ON payments
  FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER payments_no_truncate BEFORE TRUNCATE ON payments
  FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- Claims to mark PAID at the claim router, delivered until acknowledged.
CREATE TABLE paid_outbox (
  transaction_id  text PRIMARY KEY REFERENCES claims (transaction_id),
  created_at      timestamptz NOT NULL DEFAULT now(),
  attempts        integer     NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error      text,
  delivered_at    timestamptz
);
CREATE INDEX paid_outbox_due ON paid_outbox (next_attempt_at) WHERE delivered_at IS NULL;
