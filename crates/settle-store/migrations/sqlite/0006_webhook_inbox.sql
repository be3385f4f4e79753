-- Inbound provider webhooks: every verified event a provider posted, before and after a
-- worker applied it to its payment. One row per (merchant, connector, provider event id), so a
-- provider's retry of the same event is a duplicate, never a second application. The unique
-- key includes the merchant: a merchant signs its own accounts' events, and must not be able
-- to take another merchant's event id first.

CREATE TABLE webhook_inbox (
    seq                  INTEGER PRIMARY KEY,
    merchant_id          TEXT NOT NULL,
    id                   TEXT NOT NULL,
    connector            TEXT NOT NULL,
    connector_account_id TEXT NOT NULL,
    provider_event_id    TEXT NOT NULL CHECK (length(provider_event_id) BETWEEN 1 AND 255),
    type                 TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    payload              TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('received', 'applied', 'ignored', 'parked')),
    attempts             BIGINT NOT NULL CHECK (attempts >= 0),
    next_attempt_at      BIGINT NOT NULL,
    reason               TEXT,
    payment_id           TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    CONSTRAINT webhook_inbox_key UNIQUE (merchant_id, id),
    CONSTRAINT webhook_inbox_event UNIQUE (merchant_id, connector, provider_event_id)
);
-- The worker's queue: only rows still to apply.
CREATE INDEX webhook_inbox_due ON webhook_inbox (next_attempt_at) WHERE status = 'received';
-- The operator's view (`?status=parked`), newest first.
CREATE INDEX webhook_inbox_status ON webhook_inbox (status, seq);

-- A webhook names its connector account by id alone (the provider does not know the merchant).
CREATE INDEX connector_accounts_id ON connector_accounts (id);
-- A provider event names its payment by the provider's id.
CREATE INDEX payments_provider_ref ON payments (merchant_id, provider_ref) WHERE provider_ref IS NOT NULL;

