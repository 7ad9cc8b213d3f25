//! The vault's encryption: every client secret, access token and refresh token is stored as an
//! XChaCha20-Poly1305 ciphertext `tdv1.<key id>.<base64url(nonce ‖ ciphertext)>`, whose
//! associated data binds it to its table, column and row, so a ciphertext copied to another
//! row or tenant fails to decrypt. Keys come from `secrets.key_file`: one key per line,
//! `<key id> <base64 of 32 bytes>`; the first line encrypts, the others only decrypt (rotation).
//!
//! Owns no tables (the modules that own secret columns call it). Invariants: key material and
//! decrypted plaintext live in zeroizing buffers; `Debug` shows key ids, never keys; errors
//! never carry plaintext or key bytes.
//!
//! The vault layer's other files: `connections.rs` (the connection rows and their sealed
//! tokens), `identity.rs` (the identity platform's token endpoints) and `tokens.rs` (access
//! tokens handed out: cache, single flight, sweep).

pub mod connections;
pub mod identity;
pub mod tokens;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use zeroize::Zeroizing;

/// The version prefix of every ciphertext.
const PREFIX: &str = "tdv1";
const NONCE_LEN: usize = 24;

/// What went wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key file is missing, unreadable or malformed.
    #[error("secrets.key_file {path}: {problem}; fix: {fix}")]
    KeyFile {
        /// The resolved path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// A ciphertext names a key that is not configured.
    #[error("a stored secret is encrypted with key `{key_id}`, which secrets.key_file does not hold; fix: add that key back as a read-only line")]
    UnknownKey {
        /// The key id.
        key_id: String,
    },
    /// Authentication failed: tampered, or moved from another row.
    #[error("a stored secret failed to decrypt: it was altered or does not belong to this row")]
    Decrypt,
    /// Not a vault ciphertext.
    #[error("a stored secret is not in the vault's format")]
    Malformed,
}

impl VaultError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            VaultError::KeyFile { .. } => "vault_key_file",
            VaultError::UnknownKey { .. } => "vault_key_missing",
            VaultError::Decrypt | VaultError::Malformed => "vault_decrypt_failed",
        }
    }
}

/// Where a ciphertext lives; part of what it is authenticated with.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    /// Table name.
    pub table: &'a str,
    /// Column name.
    pub column: &'a str,
    /// Row identity (primary key, plus any other key columns).
    pub row: &'a str,
}

/// One stored ciphertext with where it lives, as the module owning its table lists it (for
/// key checks and rotation, which walk every sealed value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// Table name.
    pub table: &'static str,
    /// Column name.
    pub column: &'static str,
    /// Row identity as its slot binds it.
    pub row: String,
    /// The ciphertext.
    pub sealed: String,
}

impl SealedValue {
    /// The slot the ciphertext is bound to.
    pub fn slot(&self) -> Slot<'_> {
        Slot {
            table: self.table,
            column: self.column,
            row: &self.row,
        }
    }

    /// The key id the ciphertext names, if it is in the vault's format.
    pub fn key_id(&self) -> Option<&str> {
        key_id_of(&self.sealed)
    }
}

impl Slot<'_> {
    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        format!(
            "{PREFIX}|{key_id}|{}|{}|{}",
            self.table, self.column, self.row
        )
        .into_bytes()
    }
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The configured keys; the first encrypts.
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A relative key file is looked up in `$CREDENTIALS_DIRECTORY` when systemd set one and the
/// file is there.
pub fn resolve_key_file(path: &Path) -> PathBuf {
    if path.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let candidate = Path::new(&dir).join(path);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

impl Keyring {
    /// Parses key file contents.
    ///
    /// # Errors
    /// [`VaultError::KeyFile`] naming the line that is wrong.
    pub fn parse(path: &Path, contents: &str) -> Result<Self, VaultError> {
        let bad = |problem: String| {
            VaultError::KeyFile {
            path: path.to_path_buf(),
            problem,
            fix: "one key per line: `<key id> <base64 of 32 random bytes>`; create one with `tenantd keys generate`",
        }
        };
        let mut keys = Vec::new();
        for (number, line) in contents.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, encoded) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("line {} has no key", number + 1)))?;
            if !valid_key_id(id) {
                return Err(bad(format!(
                    "line {}: key ids are 1-32 of A-Z a-z 0-9 - _",
                    number + 1
                )));
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| bad(format!("line {}: the key is not base64", number + 1)))?,
            );
            if bytes.len() != 32 {
                return Err(bad(format!(
                    "line {}: a key is 32 bytes, this one is {}",
                    number + 1,
                    bytes.len()
                )));
            }
            if keys.iter().any(|k: &Key| k.id == id) {
                return Err(bad(format!(
                    "line {}: key id `{id}` appears twice",
                    number + 1
                )));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).expect("32-byte key");
            keys.push(Key {
                id: id.to_string(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(bad("the file holds no key".into()));
        }
        Ok(Self { keys })
    }

    /// Reads the key file.
    ///
    /// # Errors
    /// [`VaultError::KeyFile`] when it is missing, unreadable or malformed.
    pub fn load(path: &Path) -> Result<Self, VaultError> {
        use std::os::unix::fs::PermissionsExt;
        let resolved = resolve_key_file(path);
        // Like ssh with a private key: keys anyone else on the machine can read are refused.
        if let Ok(metadata) = std::fs::metadata(&resolved) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::KeyFile {
                    path: resolved,
                    problem: format!(
                        "it is readable or writable by group or others (mode {mode:03o}), so anyone on this machine could read the keys"
                    ),
                    fix: "make it its owner's alone: chmod 600 <the file above> (systemd's LoadCredential= files already are)",
                });
            }
        }
        let contents = Zeroizing::new(std::fs::read_to_string(&resolved).map_err(|err| VaultError::KeyFile {
            path: resolved.clone(),
            problem: err.kind().to_string(),
            fix: "create it with `tenantd keys generate --out PATH` and point secrets.key_file at it",
        })?);
        Self::parse(&resolved, &contents)
    }

    /// A key file line with a fresh random key.
    pub fn new_key_line(id: &str) -> Zeroizing<String> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        Zeroizing::new(format!("{id} {}\n", STANDARD.encode(key)))
    }

    /// Writes a new key file holding one fresh key, readable by its owner only.
    ///
    /// # Errors
    /// [`VaultError::KeyFile`] when it exists already or cannot be written.
    pub fn create_file(path: &Path, id: &str) -> Result<(), VaultError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |problem: String| VaultError::KeyFile {
            path: path.to_path_buf(),
            problem,
            fix: "choose another path, or check the folder's permissions",
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.kind().to_string()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.kind().to_string()))?;
        let header =
            "# tenantd vault keys: `<key id> <base64 of 32 bytes>`; the first line encrypts.\n";
        file.write_all(header.as_bytes())
            .and_then(|()| file.write_all(Self::new_key_line(id).as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| fail(e.kind().to_string()))
    }

    /// Loads `secrets.key_file`; the built-in default file is created with a fresh key when
    /// missing (zero setup), a configured one never is. Returns the keyring and whether it was
    /// just created.
    ///
    /// # Errors
    /// [`VaultError::KeyFile`].
    pub fn open_configured(path: &Path) -> Result<(Self, bool), VaultError> {
        let is_default = path == Path::new(crate::config::DEFAULT_KEY_FILE);
        if is_default && !resolve_key_file(path).exists() {
            let id = format!("k{}", crate::clock::now_unix());
            Self::create_file(path, &id)?;
            return Ok((Self::load(path)?, true));
        }
        Ok((Self::load(path)?, false))
    }

    /// The id of the key that encrypts.
    pub fn active_id(&self) -> &str {
        &self.keys[0].id
    }

    /// The key ids, the active one first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Encrypts `plaintext` for `slot` under the active key.
    pub fn seal(&self, plaintext: &[u8], slot: Slot<'_>) -> String {
        let key = &self.keys[0];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = slot.associated_data(&key.id);
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("encryption of in-memory data cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}.{}.{}", key.id, URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts a ciphertext stored in `slot`.
    ///
    /// # Errors
    /// [`VaultError`] for an unknown key, another slot, tampering or a malformed value.
    pub fn open(&self, ciphertext: &str, slot: Slot<'_>) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let key_id = key_id_of(ciphertext).ok_or(VaultError::Malformed)?;
        let encoded = ciphertext.rsplit('.').next().ok_or(VaultError::Malformed)?;
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| VaultError::UnknownKey {
                    key_id: key_id.to_string(),
                })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| VaultError::Malformed)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(VaultError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let aad = slot.associated_data(key_id);
        key.cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt)
    }

    /// Decrypts to a string.
    ///
    /// # Errors
    /// As [`Keyring::open`]; [`VaultError::Malformed`] for non-UTF-8 plaintext.
    pub fn open_string(
        &self,
        ciphertext: &str,
        slot: Slot<'_>,
    ) -> Result<Zeroizing<String>, VaultError> {
        let bytes = self.open(ciphertext, slot)?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Malformed)
    }
}

/// The key id a ciphertext was sealed with.
pub fn key_id_of(ciphertext: &str) -> Option<&str> {
    let mut parts = ciphertext.split('.');
    (parts.next()? == PREFIX).then_some(())?;
    let id = parts.next()?;
    parts.next()?;
    valid_key_id(id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &[&str]) -> Keyring {
        let text: String = lines
            .iter()
            .map(|id| Keyring::new_key_line(id).to_string())
            .collect();
        Keyring::parse(Path::new("test.keys"), &text).expect("valid keys")
    }

    const SLOT: Slot<'static> = Slot {
        table: "connections",
        column: "client_secret",
        row: "c1",
    };

    #[test]
    fn sealed_values_open_only_in_their_own_slot() {
        let keys = ring(&["k1"]);
        let sealed = keys.seal(b"canary-secret", SLOT);
        assert!(sealed.starts_with("tdv1.k1."));
        assert!(!sealed.contains("canary"));
        assert_eq!(&keys.open(&sealed, SLOT).unwrap()[..], b"canary-secret");
        for other in [
            Slot { row: "c2", ..SLOT },
            Slot {
                column: "refresh_token",
                ..SLOT
            },
            Slot {
                table: "tokens",
                ..SLOT
            },
        ] {
            assert!(matches!(
                keys.open(&sealed, other),
                Err(VaultError::Decrypt)
            ));
        }
        assert_ne!(
            keys.seal(b"canary-secret", SLOT),
            sealed,
            "fresh nonce every time"
        );
    }

    #[test]
    fn a_flipped_byte_fails() {
        let keys = ring(&["k1"]);
        let sealed = keys.seal(b"value", SLOT);
        let mut bytes = URL_SAFE_NO_PAD
            .decode(sealed.rsplit('.').next().unwrap())
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("tdv1.k1.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(matches!(
            keys.open(&tampered, SLOT),
            Err(VaultError::Decrypt)
        ));
        assert!(matches!(
            keys.open("plaintext", SLOT),
            Err(VaultError::Malformed)
        ));
    }

    #[test]
    fn old_keys_decrypt_and_only_the_first_encrypts() {
        let old = ring(&["old"]);
        let sealed_old = old.seal(b"v", SLOT);
        let text = format!("{}{}", Keyring::new_key_line("new").as_str(), "");
        let mut both = Keyring::parse(Path::new("k"), &text).unwrap();
        both.keys.push(old.keys.into_iter().next().unwrap());
        assert_eq!(both.active_id(), "new");
        assert_eq!(&both.open(&sealed_old, SLOT).unwrap()[..], b"v");
        assert!(both.seal(b"v", SLOT).starts_with("tdv1.new."));
        let only_new = ring(&["new"]);
        assert!(matches!(
            only_new.open(&sealed_old, SLOT),
            Err(VaultError::UnknownKey { .. })
        ));
    }

    #[test]
    fn key_files_are_checked_line_by_line_and_never_printed() {
        let err = Keyring::parse(Path::new("k"), "k1 not-base64!\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let short = format!("k1 {}\n", STANDARD.encode([0u8; 16]));
        assert!(Keyring::parse(Path::new("k"), &short)
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        assert!(Keyring::parse(Path::new("k"), "# only a comment\n").is_err());
        let line = Keyring::new_key_line("k1");
        let keys = Keyring::parse(Path::new("k"), &line).unwrap();
        let debug = format!("{keys:?}");
        assert!(debug.contains("k1"));
        assert!(!debug.contains(line.split(' ').nth(1).unwrap().trim()));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.keys");
        Keyring::create_file(&path, "k1").unwrap();
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Keyring::load(&path).unwrap_err();
            assert_eq!(err.reason_code(), "vault_key_file");
            let text = err.to_string();
            assert!(text.contains(&format!("mode {mode:03o}")), "{text}");
            assert!(text.contains("chmod 600"), "{text}");
            assert!(text.contains(path.to_str().unwrap()), "{text}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            Keyring::load(&path).is_ok(),
            "read-only for its owner is fine"
        );
    }

    #[test]
    fn created_files_are_private_and_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.keys");
        Keyring::create_file(&path, "k1").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Keyring::load(&path).unwrap().active_id(), "k1");
        assert!(
            Keyring::create_file(&path, "k2").is_err(),
            "never overwrites keys"
        );
    }
}

/// Fuzzing the sealed-value format and the key file with a fixed budget: anything stored in a
/// secret column, or written in a key file, opens, or fails with an error, and never panics;
/// a ciphertext changed anywhere never opens.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn slot() -> Slot<'static> {
        Slot {
            table: "connections",
            column: "client_secret",
            row: "c1",
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_stored_text_fails_cleanly(text in any::<String>()) {
            let keys = Keyring::parse(Path::new("k"), &Keyring::new_key_line("k1")).unwrap();
            let _ = key_id_of(&text);
            prop_assert!(keys.open(&text, slot()).is_err() || text.starts_with("tdv1.k1."));
            let shaped = format!("tdv1.k1.{text}");
            let _ = keys.open(&shaped, slot());
        }

        #[test]
        fn a_changed_ciphertext_never_opens(plain in proptest::collection::vec(any::<u8>(), 0..64), at in any::<usize>(), with in any::<char>()) {
            let keys = Keyring::parse(Path::new("k"), &Keyring::new_key_line("k1")).unwrap();
            let sealed = keys.seal(&plain, slot());
            let mut chars: Vec<char> = sealed.chars().collect();
            let at = at % chars.len();
            prop_assume!(chars[at] != with);
            chars[at] = with;
            let changed: String = chars.into_iter().collect();
            prop_assert!(keys.open(&changed, slot()).is_err());
        }

        #[test]
        fn any_key_file_text_parses_or_names_the_line(text in any::<String>()) {
            match Keyring::parse(Path::new("k"), &text) {
                Ok(keys) => prop_assert!(!keys.key_ids().is_empty()),
                Err(err) => prop_assert_eq!(err.reason_code(), "vault_key_file"),
            }
        }
    }
}
