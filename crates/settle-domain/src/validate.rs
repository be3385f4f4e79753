//! Small parsers for identifiers and keys that arrive from clients.

/// Longest client-chosen id (ledger account and transfer ids).
pub const CLIENT_ID_LEN_MAX: usize = 64;
/// Longest `Idempotency-Key` header value.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// A client-chosen id: 1–64 characters of `[A-Za-z0-9_:.-]`.
pub fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= CLIENT_ID_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

/// An idempotency key: 1–255 printable ASCII characters (space through tilde).
pub fn is_idempotency_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= IDEMPOTENCY_KEY_LEN_MAX && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(is_client_id("acct:cash.usd-1_a"));
        assert!(is_client_id(&"a".repeat(64)));
        assert!(!is_client_id(&"a".repeat(65)));
        assert!(!is_client_id(""));
        assert!(!is_client_id("a b"));
        assert!(!is_client_id("a/b"));
        assert!(!is_client_id("é"));
    }

    #[test]
    fn idempotency_keys() {
        assert!(is_idempotency_key("order 42 / retry ~"));
        assert!(is_idempotency_key(&"k".repeat(255)));
        assert!(!is_idempotency_key(&"k".repeat(256)));
        assert!(!is_idempotency_key(""));
        assert!(!is_idempotency_key("tab\there"));
        assert!(!is_idempotency_key("ünicode"));
    }
}
