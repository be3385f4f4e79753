-- Invoices paid by payment events (seed 003), and the inbox of those events. The database
-- enforces the rules too: an invoice's status agrees with what it was paid, an event id is
-- received once per merchant, a concluded event never goes back to `received`.

CREATE TABLE invoices (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id    TEXT NOT NULL REFERENCES merchants (id),
    id             TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('draft', 'sent', 'partially_paid', 'paid', 'void')),
    currency       TEXT NOT NULL CHECK (length(currency) = 3),
    amount_due     BIGINT NOT NULL CHECK (amount_due > 0),
    amount_paid    BIGINT NOT NULL CHECK (amount_paid >= 0),
    customer_email TEXT NOT NULL,
    customer_name  TEXT,
    description    TEXT,
    metadata       TEXT NOT NULL,
    due_date       BIGINT,
    sent_at        BIGINT,
    paid_at        BIGINT,
    voided_at      BIGINT,
    version        BIGINT NOT NULL CHECK (version > 0),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    CONSTRAINT invoices_key UNIQUE (merchant_id, id),
    -- Money reaches only open invoices, and the status follows from what was paid.
    CONSTRAINT invoices_status_paid CHECK (
        (status IN ('draft', 'sent', 'void') AND amount_paid = 0)
        OR (status = 'partially_paid' AND amount_paid > 0 AND amount_paid < amount_due)
        OR (status = 'paid' AND amount_paid >= amount_due))
);
CREATE INDEX invoices_merchant ON invoices (merchant_id, seq);
CREATE INDEX invoices_customer ON invoices (merchant_id, customer_email, seq);

-- The inbox: one row per (merchant, sender's event id), applied or rejected by the worker.
CREATE TABLE invoice_payment_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    id          TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    invoice_id  TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    currency    TEXT NOT NULL CHECK (length(currency) = 3),
    status      TEXT NOT NULL CHECK (status IN ('received', 'applied', 'rejected')),
    reason      TEXT,
    transfer_id TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    CONSTRAINT invoice_payment_events_key UNIQUE (merchant_id, id),
    CONSTRAINT invoice_payment_events_once UNIQUE (merchant_id, event_id),
    CONSTRAINT invoice_payment_events_outcome CHECK (
        (status = 'received' AND reason IS NULL AND transfer_id IS NULL)
        OR (status = 'applied' AND reason IS NULL AND transfer_id IS NOT NULL)
        OR (status = 'rejected' AND reason IS NOT NULL AND transfer_id IS NULL))
);
CREATE INDEX invoice_payment_events_invoice ON invoice_payment_events (merchant_id, invoice_id, seq);
CREATE INDEX invoice_payment_events_received ON invoice_payment_events (seq) WHERE status = 'received';

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['invoices', 'invoice_payment_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY merchant_isolation ON %I USING ('
            'merchant_id = current_setting(''settle.merchant_id'', true) '
            'OR current_setting(''settle.merchant_id'', true) = ''*'')', t);
    END LOOP;
END $$;
