//! JWT-shaped tokens: `base64url(header).base64url(claims).base64url(signature)`.
//!
//! The emulator signs with HMAC-SHA256 under a key generated at start. Microsoft's access tokens
//! are RS256 and, for Graph, opaque to clients ("access tokens are opaque to clients",
//! https://learn.microsoft.com/entra/identity-platform/access-tokens), so clients may decode the
//! claims but must not depend on the signature; the emulator verifies its own tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies tokens.
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

impl Signer {
    /// A signer with a fresh random key.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self { key }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// Encodes and signs `claims`.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        let header = json!({"typ": "JWT", "alg": "HS256", "kid": "graph-emulator"});
        let head = URL_SAFE_NO_PAD.encode(header.to_string());
        let body = URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string());
        let signing_input = format!("{head}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The claims of a token this signer issued, or `None` when it is malformed or forged.
    /// Expiry is the caller's business.
    pub fn verify(&self, token: &str) -> Option<Map<String, Value>> {
        let mut parts = token.split('.');
        let (head, body, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = self.mac();
        mac.update(head.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac.verify_slice(&signature).ok()?;
        decode_claims(token)
    }
}

/// The claims of any JWT-shaped token, unverified.
pub fn decode_claims(token: &str) -> Option<Map<String, Value>> {
    let body = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_tampering() {
        let signer = Signer::random();
        let mut claims = Map::new();
        claims.insert("tid".into(), json!("t1"));
        let token = signer.sign(&claims);
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(signer.verify(&token).expect("valid")["tid"], "t1");
        let mut forged = Map::new();
        forged.insert("tid".into(), json!("t2"));
        let forged_body = URL_SAFE_NO_PAD.encode(Value::Object(forged).to_string());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged_body;
        assert!(signer.verify(&parts.join(".")).is_none());
        assert!(Signer::random().verify(&token).is_none());
        assert_eq!(decode_claims(&token).expect("decodes")["tid"], "t1");
    }
}
