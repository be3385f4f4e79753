-- Domain events (written in the transaction of the change they record), the outbox the
-- webhook dispatcher fans them out from, and outbound webhooks: endpoints, deliveries (the
-- retry state of one event for one endpoint) and every delivery attempt.

CREATE TABLE events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id    TEXT NOT NULL,
    id             TEXT NOT NULL,
    type           TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    sequence       BIGINT NOT NULL CHECK (sequence > 0),
    data           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    CONSTRAINT events_key UNIQUE (merchant_id, id),
    -- Gap-free numbering per aggregate: a second writer racing for a number is refused.
    CONSTRAINT events_aggregate_sequence UNIQUE (merchant_id, aggregate_id, aggregate_type, sequence)
);
CREATE INDEX events_merchant ON events (merchant_id, seq);

-- Events not yet fanned out to the endpoints that want them.
CREATE TABLE event_outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    event_id    TEXT NOT NULL
);

CREATE TABLE webhook_endpoints (
    seq                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id                TEXT NOT NULL REFERENCES merchants (id),
    id                         TEXT NOT NULL,
    url                        TEXT NOT NULL,
    description                TEXT,
    enabled_events             TEXT NOT NULL,
    enabled                    BOOLEAN NOT NULL,
    secret_sealed              BYTEA NOT NULL,
    previous_secret_sealed     BYTEA,
    previous_secret_expires_at BIGINT,
    failing_since              BIGINT,
    disabled_reason            TEXT,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    CONSTRAINT webhook_endpoints_key UNIQUE (merchant_id, id)
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id, seq);

CREATE TABLE webhook_deliveries (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id      TEXT NOT NULL,
    id               TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         BIGINT NOT NULL CHECK (attempts >= 0),
    next_attempt_at  BIGINT NOT NULL,
    lease_until      BIGINT,
    last_status_code BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    CONSTRAINT webhook_deliveries_key UNIQUE (merchant_id, id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (merchant_id, endpoint_id, seq);

CREATE TABLE webhook_attempts (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id   TEXT NOT NULL,
    id            TEXT NOT NULL,
    delivery_id   TEXT NOT NULL,
    endpoint_id   TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    attempt       BIGINT NOT NULL CHECK (attempt > 0),
    status_code   BIGINT,
    latency_ms    BIGINT NOT NULL,
    response_body TEXT,
    error         TEXT,
    created_at    BIGINT NOT NULL,
    CONSTRAINT webhook_attempts_key UNIQUE (merchant_id, id),
    -- One attempt number per delivery: two dispatchers can never both record attempt n.
    CONSTRAINT webhook_attempts_once UNIQUE (merchant_id, delivery_id, attempt)
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (merchant_id, endpoint_id, seq);

DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['events', 'event_outbox', 'webhook_endpoints', 'webhook_deliveries', 'webhook_attempts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY merchant_isolation ON %I USING ('
            'merchant_id = current_setting(''settle.merchant_id'', true) '
            'OR current_setting(''settle.merchant_id'', true) = ''*'')', t);
    END LOOP;
END $$;
