-- Payments: vaulted cards, connector accounts and routing, payments with their attempts and
-- status history, refunds. The database enforces the money rules too: amounts are positive,
-- a payment never captures more than its amount nor refunds more than it captured.
-- Row-level security as in 0001.

CREATE TABLE payment_methods (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    id            TEXT NOT NULL,
    brand         TEXT NOT NULL,
    last4         TEXT NOT NULL CHECK (length(last4) = 4),
    exp_month     BIGINT NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      BIGINT NOT NULL,
    fingerprint   TEXT NOT NULL,
    number_sealed BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    CONSTRAINT payment_methods_key UNIQUE (merchant_id, id)
);

CREATE TABLE connector_accounts (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id        TEXT NOT NULL REFERENCES merchants (id),
    id                 TEXT NOT NULL,
    connector          TEXT NOT NULL,
    label              TEXT,
    credentials_sealed BYTEA NOT NULL,
    enabled            BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL,
    CONSTRAINT connector_accounts_key UNIQUE (merchant_id, id)
);

CREATE TABLE routing_rules (
    merchant_id TEXT PRIMARY KEY REFERENCES merchants (id),
    rules       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE payments (
    seq                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id            TEXT NOT NULL REFERENCES merchants (id),
    id                     TEXT NOT NULL,
    amount                 BIGINT NOT NULL CHECK (amount > 0),
    currency               TEXT NOT NULL CHECK (length(currency) = 3),
    capture_method         TEXT NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    status                 TEXT NOT NULL CHECK (status IN ('requires_payment_method', 'requires_confirmation',
                               'processing', 'requires_capture', 'succeeded', 'canceled')),
    amount_capturable      BIGINT NOT NULL CHECK (amount_capturable BETWEEN 0 AND amount),
    amount_captured        BIGINT NOT NULL CHECK (amount_captured BETWEEN 0 AND amount),
    amount_refunded        BIGINT NOT NULL CHECK (amount_refunded BETWEEN 0 AND amount_captured),
    payment_method_id      TEXT,
    customer_email         TEXT,
    customer_name          TEXT,
    customer_phone         TEXT,
    description            TEXT,
    metadata               TEXT NOT NULL,
    splits                 TEXT NOT NULL,
    application_fee_amount BIGINT CHECK (application_fee_amount >= 0),
    connector              TEXT,
    connector_account_id   TEXT,
    connector_name         TEXT,
    provider_ref           TEXT,
    last_payment_error     TEXT,
    cancellation_reason    TEXT,
    authorized_at          BIGINT,
    claimed_until          BIGINT,
    version                BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    CONSTRAINT payments_key UNIQUE (merchant_id, id)
);
CREATE INDEX payments_merchant ON payments (merchant_id, seq);
CREATE INDEX payments_customer ON payments (merchant_id, customer_email, seq);
CREATE INDEX payments_work ON payments (status, updated_at) WHERE status IN ('processing', 'requires_capture');

CREATE TABLE payment_attempts (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id          TEXT NOT NULL,
    id                   TEXT NOT NULL,
    payment_id           TEXT NOT NULL,
    operation            TEXT NOT NULL,
    connector_account_id TEXT NOT NULL,
    connector            TEXT NOT NULL,
    outcome              TEXT NOT NULL,
    error_code           TEXT,
    provider_ref         TEXT,
    request_id           TEXT,
    latency_ms           BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    CONSTRAINT payment_attempts_key UNIQUE (merchant_id, id),
    FOREIGN KEY (merchant_id, payment_id) REFERENCES payments (merchant_id, id)
);
CREATE INDEX payment_attempts_payment ON payment_attempts (merchant_id, payment_id, seq);

CREATE TABLE payment_events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    id           TEXT NOT NULL,
    payment_id   TEXT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT,
    connector    TEXT,
    error_code   TEXT,
    request_id   TEXT,
    created_at   BIGINT NOT NULL,
    CONSTRAINT payment_events_key UNIQUE (merchant_id, id),
    FOREIGN KEY (merchant_id, payment_id) REFERENCES payments (merchant_id, id)
);
CREATE INDEX payment_events_payment ON payment_events (merchant_id, payment_id, seq);

CREATE TABLE refunds (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id          TEXT NOT NULL,
    id                   TEXT NOT NULL,
    payment_id           TEXT NOT NULL,
    amount               BIGINT NOT NULL CHECK (amount > 0),
    currency             TEXT NOT NULL CHECK (length(currency) = 3),
    status               TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason               TEXT,
    metadata             TEXT NOT NULL,
    parts                TEXT NOT NULL,
    connector_account_id TEXT,
    provider_ref         TEXT,
    failure_code         TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    CONSTRAINT refunds_key UNIQUE (merchant_id, id),
    FOREIGN KEY (merchant_id, payment_id) REFERENCES payments (merchant_id, id)
);
CREATE INDEX refunds_merchant ON refunds (merchant_id, seq);
CREATE INDEX refunds_payment ON refunds (merchant_id, payment_id, seq);
CREATE INDEX refunds_pending ON refunds (status, updated_at) WHERE status = 'pending';

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['payment_methods', 'connector_accounts', 'routing_rules', 'payments',
                             'payment_attempts', 'payment_events', 'refunds']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY merchant_isolation ON %I USING ('
            'merchant_id = current_setting(''settle.merchant_id'', true) '
            'OR current_setting(''settle.merchant_id'', true) = ''*'')', t);
    END LOOP;
END $$;
