//! What a process settles with its database when it starts: that its card-vault key is the one
//! the database's sealed data was made with, and the operator's admin token, whose digest lives
//! in the database so that every process sharing it accepts the same token.

use settle_store::{Mode, Scope, SealedKind, Store, StoreError};

use crate::{
    auth,
    error::ApiError,
    payments::connectors::sealing_context,
    vault::{Vault, KEY_LEN},
    webhooks, AppState,
};

/// The settings row holding [`Vault::key_check`] of the key the database was first used with.
pub const VAULT_KEY_CHECK_SETTING: &str = "vault_key_check";

/// How the vault key compared with the database's.
#[derive(Debug, PartialEq, Eq)]
pub enum VaultKeyCheck {
    /// The database's check value is this key's.
    Matches,
    /// The database had no check value (a new database, or one made before the check
    /// existed whose sealed data this key opens): this key's is now stored.
    Recorded,
}

#[derive(Debug)]
pub enum VaultKeyError {
    /// The database's check value is another key's.
    Differs,
    /// No check value yet, and this key does not open the data already sealed in the database.
    DoesNotOpen,
    Store(StoreError),
}

impl From<StoreError> for VaultKeyError {
    fn from(e: StoreError) -> Self {
        VaultKeyError::Store(e)
    }
}

impl std::fmt::Display for VaultKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultKeyError::Differs => f.write_str(
                "the card-vault key differs from the one this database was created with \
                 (its sealed card numbers and connector credentials would not open)",
            ),
            VaultKeyError::DoesNotOpen => f.write_str(
                "the card-vault key does not open the card numbers or connector credentials \
                 (or webhook secrets) already sealed in this database",
            ),
            VaultKeyError::Store(e) => write!(f, "cannot check the card-vault key: {e}"),
        }
    }
}

/// Compares `master` with the key the database was created with, recording it on the first
/// start (of a new database, or of one made before the check existed). Safe when several
/// processes start at once: one records, the others compare with what it recorded.
pub async fn check_vault_key(store: &dyn Store, master: &[u8; KEY_LEN]) -> Result<VaultKeyCheck, VaultKeyError> {
    let check = Vault::key_check(master);
    let mut tx = store.begin(Scope::System, Mode::Write).await?;
    if let Some(stored) = tx.get_setting(VAULT_KEY_CHECK_SETTING).await? {
        return compare(&stored, &check);
    }
    // An installation older than the check: its sealed data tells whether the key is right.
    if let Some(sample) = tx.sealed_sample().await? {
        let context = match sample.kind {
            SealedKind::CardNumber | SealedKind::ConnectorCredentials => {
                sealing_context(&sample.merchant_id, &sample.id)
            }
            SealedKind::WebhookSecret => webhooks::sealing_context(&sample.merchant_id, &sample.id),
        };
        if Vault::new(master).open(&sample.sealed, &context).is_err() {
            return Err(VaultKeyError::DoesNotOpen);
        }
    }
    if tx.insert_setting_if_absent(VAULT_KEY_CHECK_SETTING, &check).await? {
        tx.commit().await?;
        return Ok(VaultKeyCheck::Recorded);
    }
    drop(tx);
    // Another process recorded its key in the meantime.
    let mut tx = store.begin(Scope::System, Mode::Read).await?;
    match tx.get_setting(VAULT_KEY_CHECK_SETTING).await? {
        Some(stored) => compare(&stored, &check),
        None => Err(VaultKeyError::Store(StoreError::Corrupt(
            "the vault key check value vanished while being recorded".into(),
        ))),
    }
}

fn compare(stored: &str, check: &str) -> Result<VaultKeyCheck, VaultKeyError> {
    if stored == check {
        Ok(VaultKeyCheck::Matches)
    } else {
        Err(VaultKeyError::Differs)
    }
}

/// Stores `token`'s digest as the admin token unless the database has one already: whether it
/// did. Either way this process then accepts the database's token (when several processes
/// start on a new database at once, the first one's).
pub async fn claim_admin_token(state: &AppState, token: &str) -> Result<bool, ApiError> {
    let digest = auth::sha256_hex(token);
    let mut tx = state.store.begin(Scope::System, Mode::Write).await?;
    let stored = tx.insert_setting_if_absent(auth::ADMIN_TOKEN_SETTING, &digest).await?;
    tx.commit().await?;
    if stored {
        state.admin_token_digest.put((), Some(digest));
    } else {
        auth::admin_token_digest_forget(state);
    }
    Ok(stored)
}

/// The digest of the admin token the database holds, if any.
pub async fn stored_admin_token_digest(state: &AppState) -> Result<Option<String>, ApiError> {
    let mut tx = state.store.begin(Scope::System, Mode::Read).await?;
    Ok(tx.get_setting(auth::ADMIN_TOKEN_SETTING).await?)
}
