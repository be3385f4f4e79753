-- Authorize calls whose outcome stayed unknown (a timeout, a 5xx) are looked up once more some
-- minutes later, in case the provider authorized after Settle had moved on: this index finds
-- them by age. It holds only those attempts, so it costs nothing on the usual path.
CREATE INDEX payment_attempts_unknown ON payment_attempts (created_at)
    WHERE operation = 'authorize' AND error_code IN ('connector_timeout', 'connector_unavailable');
