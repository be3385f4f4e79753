-- Settle foundation: settings, merchants, API keys, idempotency, audit log, ledger.
-- Timestamps are BIGINT microseconds since the epoch; JSON documents are TEXT.
-- Every merchant-owned table carries merchant_id and is guarded by row-level security.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE merchants (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    email            TEXT NOT NULL,
    default_currency TEXT NOT NULL CHECK (length(default_currency) = 3),
    amount_limits    TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'deactivated')),
    created_at       BIGINT NOT NULL,
    deactivated_at   BIGINT,
    CONSTRAINT merchants_email_key UNIQUE (email)
);

CREATE TABLE api_keys (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    name         TEXT,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id, seq);

CREATE TABLE idempotency_keys (
    merchant_id   TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    method        TEXT NOT NULL,
    path          TEXT NOT NULL,
    status_code   BIGINT NOT NULL,
    response_body TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_logs (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    merchant_id   TEXT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    request_id    TEXT,
    ip            TEXT,
    user_agent    TEXT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX audit_logs_merchant ON audit_logs (merchant_id, seq);

CREATE TABLE ledger_accounts (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id     TEXT NOT NULL REFERENCES merchants (id),
    id              TEXT NOT NULL,
    currency        TEXT NOT NULL CHECK (length(currency) = 3),
    code            BIGINT,
    name            TEXT,
    flags           BIGINT NOT NULL CHECK (flags IN (0, 1, 2)),
    metadata        TEXT NOT NULL,
    debits_pending  BIGINT NOT NULL CHECK (debits_pending >= 0),
    debits_posted   BIGINT NOT NULL CHECK (debits_posted >= 0),
    credits_pending BIGINT NOT NULL CHECK (credits_pending >= 0),
    credits_posted  BIGINT NOT NULL CHECK (credits_posted >= 0),
    created_at      BIGINT NOT NULL,
    CONSTRAINT ledger_accounts_key UNIQUE (merchant_id, id),
    -- The limit flags, enforced by the database as well (NUMERIC: no overflow).
    CONSTRAINT ledger_accounts_debits_within_credits CHECK (
        flags <> 1 OR debits_pending::numeric + debits_posted <= credits_posted),
    CONSTRAINT ledger_accounts_credits_within_debits CHECK (
        flags <> 2 OR credits_pending::numeric + credits_posted <= debits_posted)
);

CREATE TABLE ledger_transfers (
    -- Orders each account's entries; indexed only inside the entry indexes below (one index
    -- fewer per transfer than a primary key on it).
    seq               BIGINT GENERATED ALWAYS AS IDENTITY,
    merchant_id       TEXT NOT NULL,
    id                TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('single', 'pending', 'post_pending', 'void_pending')),
    debit_account_id  TEXT NOT NULL,
    credit_account_id TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    pending_id        TEXT,
    timeout_seconds   BIGINT,
    expires_at        BIGINT,
    metadata          TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    debit_debits_pending   BIGINT NOT NULL,
    debit_debits_posted    BIGINT NOT NULL,
    debit_credits_pending  BIGINT NOT NULL,
    debit_credits_posted   BIGINT NOT NULL,
    credit_debits_pending  BIGINT NOT NULL,
    credit_debits_posted   BIGINT NOT NULL,
    credit_credits_pending BIGINT NOT NULL,
    credit_credits_posted  BIGINT NOT NULL,
    CONSTRAINT ledger_transfers_key PRIMARY KEY (merchant_id, id),
    CONSTRAINT ledger_transfers_accounts_differ CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_transfers_resolution_shape CHECK (
        (kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
    -- No foreign keys to ledger_accounts: the writer loads and locks both accounts before it
    -- decides, accounts are never deleted, and `settle verify` checks that every transfer names
    -- an existing account. Measured: the two FK checks per transfer cost a quarter of
    -- PostgreSQL's time in batched writes (see ARCHITECTURE.md).
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (merchant_id, debit_account_id, seq);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (merchant_id, credit_account_id, seq);
-- A pending transfer is posted or voided at most once.
CREATE UNIQUE INDEX ledger_transfers_one_resolution ON ledger_transfers (merchant_id, pending_id)
    WHERE pending_id IS NOT NULL;

CREATE TABLE ledger_pending (
    merchant_id TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    expires_at  BIGINT,
    PRIMARY KEY (merchant_id, transfer_id)
);
CREATE INDEX ledger_pending_due ON ledger_pending (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

-- Row-level security: a transaction sees only the merchant named in `settle.merchant_id`
-- (or every merchant when it is '*', which only internal jobs and the operator API set).
-- FORCE makes the policies apply to the table owner too; superusers bypass them regardless.
ALTER TABLE merchants ENABLE ROW LEVEL SECURITY;
ALTER TABLE merchants FORCE ROW LEVEL SECURITY;
CREATE POLICY merchant_isolation ON merchants USING (
    id = current_setting('settle.merchant_id', true) OR current_setting('settle.merchant_id', true) = '*');
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'idempotency_keys', 'audit_logs', 'ledger_accounts',
                             'ledger_transfers', 'ledger_pending']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY merchant_isolation ON %I USING ('
            'merchant_id = current_setting(''settle.merchant_id'', true) '
            'OR current_setting(''settle.merchant_id'', true) = ''*'')', t);
    END LOOP;
END $$;
