//! The card vault's cryptography: sealing card numbers and connector credentials with
//! AES-256-GCM, and fingerprinting card numbers with HMAC-SHA256.
//!
//! One 32-byte master key (`SETTLE_VAULT_KEY`, 64 hex digits; generated into the data
//! directory on the embedded default) yields two sub-keys by HMAC: one encrypts, one
//! fingerprints, so neither use weakens the other. A sealed value is
//! `version (1 byte) ‖ nonce (12 random bytes) ‖ ciphertext+tag`; the row's merchant and id
//! are the associated data, so a sealed value copied to another row does not open.

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

pub struct Vault {
    cipher: Aes256Gcm,
    fingerprint_key: [u8; KEY_LEN],
}

#[derive(Debug, PartialEq, Eq)]
pub struct SealBroken;

fn derive(master: &[u8; KEY_LEN], label: &[u8]) -> [u8; KEY_LEN] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master).unwrap_or_else(|_| unreachable_key());
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// HMAC accepts keys of any length; this cannot happen.
fn unreachable_key() -> HmacSha256 {
    unreachable!("HMAC takes keys of any length")
}

impl Vault {
    pub fn new(master: &[u8; KEY_LEN]) -> Vault {
        let seal_key = derive(master, b"settle vault seal v1");
        Vault {
            cipher: Aes256Gcm::new(&seal_key.into()),
            fingerprint_key: derive(master, b"settle vault fingerprint v1"),
        }
    }

    /// Parses a key given as 64 hex digits.
    pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN], String> {
        let bytes = hex::decode(text.trim()).map_err(|_| "the vault key must be 64 hex digits".to_owned())?;
        bytes
            .try_into()
            .map_err(|_| "the vault key must be 64 hex digits (32 bytes)".to_owned())
    }

    pub fn generate_key() -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    }

    /// Encrypts `plaintext`, bound to `context` (the row's merchant and id).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption fails only for inputs beyond AES-GCM's 64 GiB limit; ours are bytes long.
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SealBroken> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(SealBroken);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SealBroken)
    }

    /// A value derived from the master key (HMAC-SHA256 of a fixed label, hex) that a database
    /// stores to recognise the key it was sealed with; it reveals neither the key nor its
    /// sub-keys.
    pub fn key_check(master: &[u8; KEY_LEN]) -> String {
        hex::encode(derive(master, b"settle vault key check v1"))
    }

    /// The same card number gives the same fingerprint within one merchant, and different ones
    /// across merchants.
    pub fn fingerprint(&self, merchant_id: &str, number: &str) -> String {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.fingerprint_key).unwrap_or_else(|_| unreachable_key());
        mac.update(merchant_id.as_bytes());
        mac.update(&[0]);
        mac.update(number.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_only_with_its_context_and_key() {
        let vault = Vault::new(&Vault::generate_key());
        let sealed = vault.seal(b"4242424242424242", "m1/pm_1");
        assert!(!sealed.windows(16).any(|w| w == b"4242424242424242"));
        assert_eq!(vault.open(&sealed, "m1/pm_1").as_deref(), Ok(&b"4242424242424242"[..]));
        assert_eq!(vault.open(&sealed, "m1/pm_2"), Err(SealBroken));
        let other = Vault::new(&Vault::generate_key());
        assert_eq!(other.open(&sealed, "m1/pm_1"), Err(SealBroken));
        assert_ne!(vault.seal(b"x", "c"), vault.seal(b"x", "c"), "random nonces");
        assert_eq!(Vault::key_check(&[7; KEY_LEN]), Vault::key_check(&[7; KEY_LEN]));
        assert_ne!(Vault::key_check(&[7; KEY_LEN]), Vault::key_check(&[8; KEY_LEN]));
        assert!(!Vault::key_check(&[7; KEY_LEN]).contains(&hex::encode([7; KEY_LEN])));
    }

    #[test]
    fn fingerprints_are_per_merchant() {
        let vault = Vault::new(&Vault::generate_key());
        let a = vault.fingerprint("m1", "4242424242424242");
        assert_eq!(a, vault.fingerprint("m1", "4242424242424242"));
        assert_ne!(a, vault.fingerprint("m2", "4242424242424242"));
        assert_ne!(a, vault.fingerprint("m1", "4000000000000002"));
    }

    #[test]
    fn keys_parse_from_hex() {
        let key = Vault::generate_key();
        assert_eq!(Vault::parse_key(&hex::encode(key)), Ok(key));
        assert!(Vault::parse_key("abc").is_err());
    }
}
