//! Proves the vault's keys against the stored secrets and re-seals them under the active key.
//! At start ([`prove`]): every key id that sealed a stored value must be in `secrets.key_file`
//! and open one of its values, or tenantd does not start (a wrong key file would otherwise
//! look ready while every token request fails). `tenantd keys verify` ([`tally`]) opens every
//! value and counts per key id; `tenantd keys rotate` ([`rotate`]) re-seals every value it can
//! and names each one it cannot.
//!
//! Owns no tables: each sealed column's owner lists its values and replaces them
//! (`connections`, `subscriptions`, `oauth`). Invariants: no plaintext leaves this module; a
//! value that does not open is reported, never skipped silently and never rewritten.

use crate::store::{Store, StoreError};
use crate::vault::{Keyring, SealedValue};

/// Why the keys do not fit the stored secrets.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored values name a key the key file does not hold.
    #[error("{values} stored secret(s) are sealed with key `{key_id}` (e.g. {example}), which secrets.key_file does not hold; fix: add that key's line back to the key file (below the first line, it only decrypts), or point secrets.key_file at the file that holds it")]
    KeyMissing {
        /// The key id.
        key_id: String,
        /// How many values name it.
        values: usize,
        /// Where one of them is (`table.column`).
        example: String,
    },
    /// The key file holds a key with that id, but it opens none of its values.
    #[error("key `{key_id}` in secrets.key_file opens none of the {values} stored secret(s) sealed under that id: it is not the key they were sealed with; fix: point secrets.key_file at the key file these secrets were sealed with (`tenantd keys verify` counts per key id)")]
    WrongKey {
        /// The key id.
        key_id: String,
        /// How many values name it.
        values: usize,
    },
}

impl KeyCheckError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            KeyCheckError::Store(err) => err.reason_code(),
            KeyCheckError::KeyMissing { .. } => "vault_key_missing",
            KeyCheckError::WrongKey { .. } => "vault_key_wrong",
        }
    }
}

/// Every sealed value in the database, from each table's owner.
///
/// # Errors
/// The database failed.
pub async fn sealed_values(store: &Store) -> Result<Vec<SealedValue>, StoreError> {
    let mut values = crate::vault::connections::sealed_values(store).await?;
    values.extend(crate::subscriptions::sealed_values(store).await?);
    values.extend(crate::oauth::sealed_values(store).await?);
    values.extend(crate::bots::sealed_values(store).await?);
    Ok(values)
}

/// How one key id fares against the stored values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyUse {
    /// The key id (`?` for values not in the vault's format).
    pub key_id: String,
    /// Whether `secrets.key_file` holds it.
    pub in_key_file: bool,
    /// Values it opened.
    pub opened: usize,
    /// Values under this id that did not open.
    pub failed: usize,
}

/// Opens every value and counts per key id: the key file's ids first (in its order, unused
/// ones with zero), then ids only the database names.
pub fn tally(keys: &Keyring, values: &[SealedValue]) -> Vec<KeyUse> {
    let mut uses: Vec<KeyUse> = keys
        .key_ids()
        .into_iter()
        .map(|id| KeyUse {
            key_id: id.to_string(),
            in_key_file: true,
            opened: 0,
            failed: 0,
        })
        .collect();
    for value in values {
        let id = value.key_id().unwrap_or("?");
        let index = match uses.iter().position(|u| u.key_id == id) {
            Some(index) => index,
            None => {
                uses.push(KeyUse {
                    key_id: id.to_string(),
                    in_key_file: false,
                    opened: 0,
                    failed: 0,
                });
                uses.len() - 1
            }
        };
        if keys.open(&value.sealed, value.slot()).is_ok() {
            uses[index].opened += 1;
        } else {
            uses[index].failed += 1;
        }
    }
    uses
}

/// The start-up proof: each key id that sealed a stored value is in the key file and opens
/// at least one of its values (values fail one by one when rows were tampered with; a whole id
/// failing means the wrong key). An empty database proves nothing and passes.
///
/// # Errors
/// [`KeyCheckError`] naming the key and the fix.
pub async fn prove(store: &Store, keys: &Keyring) -> Result<(), KeyCheckError> {
    let values = sealed_values(store).await?;
    let mut ids: Vec<&str> = values.iter().filter_map(SealedValue::key_id).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let sealed: Vec<&SealedValue> = values.iter().filter(|v| v.key_id() == Some(id)).collect();
        if !keys.key_ids().contains(&id) {
            return Err(KeyCheckError::KeyMissing {
                key_id: id.to_string(),
                values: sealed.len(),
                example: format!("{}.{}", sealed[0].table, sealed[0].column),
            });
        }
        if !sealed
            .iter()
            .any(|value| keys.open(&value.sealed, value.slot()).is_ok())
        {
            return Err(KeyCheckError::WrongKey {
                key_id: id.to_string(),
                values: sealed.len(),
            });
        }
    }
    Ok(())
}

/// A value rotation could not re-seal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unrotated {
    /// Table.
    pub table: &'static str,
    /// Column.
    pub column: &'static str,
    /// The row (a connection, subscription or sign-in state id; tokens: `connection/resource`).
    pub row: String,
    /// Why (`vault_key_missing`, `vault_decrypt_failed`).
    pub reason: &'static str,
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// Values re-sealed under the active key in this run.
    pub rotated: usize,
    /// Values already under the active key.
    pub current: usize,
    /// Values that changed while being re-sealed (a token refreshed meanwhile); run again.
    pub changed: usize,
    /// Values that could not be opened, each named.
    pub left: Vec<Unrotated>,
}

impl Rotation {
    /// Whether every value is under the active key now.
    pub fn complete(&self) -> bool {
        self.left.is_empty() && self.changed == 0
    }
}

/// Re-seals every value not under the active key, row by row and only if unchanged since it
/// was read (safe to interrupt, to run again, and to run beside a daemon). A value that does
/// not open is listed in [`Rotation::left`] and the rest go on. `progress` sees the number
/// re-sealed so far after each one.
///
/// # Errors
/// The database failed (what was re-sealed before stays re-sealed).
pub async fn rotate(
    store: &Store,
    keys: &Keyring,
    mut progress: impl FnMut(usize),
) -> Result<Rotation, StoreError> {
    let mut report = Rotation::default();
    for value in sealed_values(store).await? {
        if value.key_id() == Some(keys.active_id()) {
            report.current += 1;
            continue;
        }
        let plain = match keys.open(&value.sealed, value.slot()) {
            Ok(plain) => plain,
            Err(err) => {
                report.left.push(Unrotated {
                    table: value.table,
                    column: value.column,
                    row: value.row.clone(),
                    reason: err.reason_code(),
                });
                continue;
            }
        };
        let resealed = keys.seal(&plain, value.slot());
        let replaced = match value.table {
            "connections" | "connection_tokens" => {
                crate::vault::connections::replace_sealed(store, &value, &resealed).await?
            }
            "subscriptions" => {
                crate::subscriptions::replace_sealed(store, &value, &resealed).await?
            }
            "bots" => crate::bots::replace_sealed(store, &value, &resealed).await?,
            _ => crate::oauth::replace_sealed(store, &value, &resealed).await?,
        };
        if replaced {
            report.rotated += 1;
            progress(report.rotated);
        } else {
            report.changed += 1;
        }
    }
    Ok(report)
}
