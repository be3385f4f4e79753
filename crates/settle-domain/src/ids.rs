//! Prefixed, time-ordered ids (`la_…`, `mer_…`).
//!
//! The id is the prefix, then 10 characters of milliseconds since the epoch and 16 characters of
//! randomness, both in Crockford base32 — so ids sort by creation time as plain strings. The
//! caller supplies the time and the random bits; this module only formats.

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Formats `prefix_` + 10 base32 chars of `millis` (50 bits) + 16 base32 chars of `random` (80 bits).
pub fn format_id(prefix: &str, millis: u64, random: u128) -> String {
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    push_base32(&mut out, u128::from(millis), 10);
    push_base32(&mut out, random, 16);
    out
}

/// Whether `id` has the shape [`format_id`] gives ids of `prefix`.
pub fn is_generated(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

fn push_base32(out: &mut String, value: u128, digits: u32) {
    for i in (0..digits).rev() {
        let index = (value >> (5 * i)) & 31;
        out.push(char::from(ALPHABET[usize::try_from(index).unwrap_or(0)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_then_randomness() {
        let a = format_id("la", 1_000, u128::MAX);
        let b = format_id("la", 1_001, 0);
        assert!(a < b);
        assert_eq!(a.len(), "la_".len() + 26);
        assert!(a.starts_with("la_"));
    }
}
