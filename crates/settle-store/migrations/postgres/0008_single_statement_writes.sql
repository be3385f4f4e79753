-- A group commit that writes only rows (a payment's claim, a new payment) runs as one
-- statement in a transaction of its own. Its compare-and-set must then fail the statement
-- itself, so that nothing of it is stored: this raises SQLSTATE SL001 when fewer rows were
-- stored than expected.
CREATE FUNCTION settle_require_stored(stored BIGINT, expected BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
BEGIN
    IF stored <> expected THEN
        RAISE EXCEPTION 'compare-and-set failed: % of % rows stored', stored, expected
            USING ERRCODE = 'SL001';
    END IF;
    RETURN stored;
END $$;
