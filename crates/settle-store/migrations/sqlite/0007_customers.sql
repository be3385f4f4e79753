-- Customers (the Stripe-compatible layer's `cus_` objects, also under /v1/customers), the
-- customer a payment and a saved payment method belong to, a payment's receipt address, and
-- which API an outbound webhook endpoint speaks (Settle's event shape or Stripe's).

CREATE TABLE customers (
    seq          INTEGER PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    id           TEXT NOT NULL,
    email        TEXT,
    name         TEXT,
    phone        TEXT,
    description  TEXT,
    metadata     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    CONSTRAINT customers_key UNIQUE (merchant_id, id)
);
CREATE INDEX customers_email ON customers (merchant_id, email) WHERE email IS NOT NULL;

ALTER TABLE payments ADD COLUMN customer_id TEXT;
ALTER TABLE payments ADD COLUMN receipt_email TEXT;
CREATE INDEX payments_customer_id ON payments (merchant_id, customer_id, seq) WHERE customer_id IS NOT NULL;

ALTER TABLE payment_methods ADD COLUMN customer_id TEXT;
CREATE INDEX payment_methods_customer_id ON payment_methods (merchant_id, customer_id, seq) WHERE customer_id IS NOT NULL;

ALTER TABLE webhook_endpoints ADD COLUMN api TEXT NOT NULL DEFAULT 'settle' CHECK (api IN ('settle', 'stripe'));
