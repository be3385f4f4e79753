-- An authorization expires a fixed time after it was made, whatever changed on the payment
-- since (its metadata, a failed capture): the expiry job looks payments awaiting capture up by
-- `authorized_at`, the processing sync by `updated_at`. One partial index each, in place of
-- one over both statuses by `updated_at`; a payment is in at most one of them.
DROP INDEX payments_work;
CREATE INDEX payments_sync_due ON payments (updated_at) WHERE status = 'processing';
CREATE INDEX payments_expiry_due ON payments (authorized_at) WHERE status = 'requires_capture';
