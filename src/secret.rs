//! Values that must never be printed: client secrets, tokens, keys, passwords in URLs.
//!
//! Owns no tables. Invariants: `Debug`, `Display` and `Serialize` of a [`Secret`] print
//! `[redacted]`; the plaintext is reachable only through [`Secret::expose`] and is zeroized when
//! the value is dropped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// What every secret prints as, wherever it is formatted.
pub const REDACTED: &str = "[redacted]";

/// A secret value. Cloning copies the plaintext into another zeroizing buffer.
#[derive(Clone, Default)]
pub struct Secret<T: Zeroize>(Zeroizing<T>);

impl<T: Zeroize> Secret<T> {
    /// Wraps a plaintext value.
    pub fn new(value: T) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Call it only where the value leaves the process on purpose (an HTTP
    /// request to the identity platform, a database connection), never to format it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Zeroize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: Zeroize + Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_the_plaintext() {
        let secret = Secret::new(String::from("canary-s3cr3t"));
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(secret.expose(), "canary-s3cr3t");
    }

    #[test]
    fn a_struct_holding_a_secret_debug_prints_redacted() {
        #[derive(Debug)]
        #[expect(dead_code, reason = "only formatted")]
        struct Credentials {
            client_id: &'static str,
            client_secret: Secret<String>,
        }
        let creds = Credentials {
            client_id: "app",
            client_secret: Secret::new("canary-s3cr3t".into()),
        };
        let printed = format!("{creds:?} {creds:#?}");
        assert!(!printed.contains("canary"), "{printed}");
        assert!(printed.contains(REDACTED));
    }
}
