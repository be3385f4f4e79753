-- The creating request's idempotency key on a refund, as on a payment (migration 3): a refund is
-- reserved and stored before the connector is called, and its idempotency record commits only
-- with the connector's answer. A retry whose first try died in between, or a duplicate sent to
-- another process meanwhile, finds the refund by its key (or is refused by this unique index)
-- instead of refunding again. Kept as long as idempotency records are, then forgotten.
ALTER TABLE refunds ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX refunds_idempotency ON refunds (merchant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX refunds_idempotency_age ON refunds (created_at) WHERE idempotency_key IS NOT NULL;
