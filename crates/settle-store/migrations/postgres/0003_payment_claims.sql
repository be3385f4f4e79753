-- A claim's plan (JSON: the connector calls it set out to make), so that the recovery job can
-- finish or release a claim whose process died; and the creating request's idempotency key,
-- so that a retry after such a crash finds the payment instead of creating a second one (kept
-- as long as idempotency records are, then forgotten by the same job).
ALTER TABLE payments ADD COLUMN claim_plan TEXT;
ALTER TABLE payments ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX payments_idempotency ON payments (merchant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX payments_idempotency_age ON payments (created_at) WHERE idempotency_key IS NOT NULL;
CREATE INDEX payments_claimed ON payments (claimed_until) WHERE claimed_until IS NOT NULL;
