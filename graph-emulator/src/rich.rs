//! Rich notifications (`includeResourceData`) as Graph sends them.
//!
//! - `encryptedContent`: the resource as JSON, encrypted with a fresh 256-bit key per item
//!   (AES-256-CBC, PKCS#7, the IV being the key's first 16 bytes), `dataSignature` =
//!   HMAC-SHA256 of the encrypted bytes under that key, and `dataKey` = the key encrypted
//!   with RSA-OAEP (SHA-1) for the subscriber's certificate. Source: learn.microsoft.com/graph/
//!   change-notifications-with-resource-data ("Decrypting resource data"), the
//!   changeNotificationEncryptedContent resource.
//! - `validationTokens`: one JWT per application and tenant in the delivery, signed RS256 by
//!   the emulator's own key, with the claims of the published example token (sample 04):
//!   `aud` the subscribing app, `iss` `https://sts.windows.net/{tenant}/`, `appid` Graph's
//!   change-tracking app. The key is published as the identity platform publishes its keys
//!   (`/common/discovery/v2.0/keys`).
//!
//! Invariants: the signing key is made once per emulator (on first use) and never leaves
//! except as its public JWKS; a certificate that does not hold an RSA key of 2,048 to 4,096
//! bits is refused when the subscription is created, as Graph refuses it.

use std::sync::OnceLock;

use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeySize, OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1};
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256};
use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// The application id Graph's change tracking signs validation tokens as (`appid`).
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// How long a validation token is valid; the published example spans about 8 hours.
const TOKEN_LIFETIME_SECONDS: i64 = 8 * 3600;

/// Signs validation tokens; its key is made on first use (RSA key generation takes a moment).
#[derive(Default)]
pub struct TokenSigner {
    key: OnceLock<(String, RsaKeyPair)>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([redacted])")
    }
}

/// The claims of a validation token, changeable so tests can forge bad ones.
#[derive(Debug, Clone)]
pub struct TokenClaims {
    /// `tid`, and the tenant in `iss`.
    pub tenant: String,
    /// `aud`: the subscribing application.
    pub audience: String,
    /// `appid`: Graph's change-tracking app for real tokens.
    pub app_id: String,
    /// `iat` and `nbf`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// `iss` when not Graph's (`https://sts.windows.net/{tenant}/`): for forging.
    pub issuer: Option<String>,
}

impl TokenClaims {
    /// The claims Graph would send now for `audience`'s subscriptions in `tenant`.
    pub fn for_delivery(tenant: &str, audience: &str, now: OffsetDateTime) -> Self {
        let issued_at = now.unix_timestamp();
        Self {
            tenant: tenant.to_string(),
            audience: audience.to_string(),
            app_id: CHANGE_TRACKING_APP_ID.to_string(),
            issued_at,
            expires_at: issued_at + TOKEN_LIFETIME_SECONDS,
            issuer: None,
        }
    }
}

impl TokenSigner {
    fn key(&self) -> &(String, RsaKeyPair) {
        self.key.get_or_init(|| {
            let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation works");
            let kid = URL_SAFE_NO_PAD
                .encode(&digest::digest(&digest::SHA256, key.public_key().as_ref()).as_ref()[..20]);
            (kid, key)
        })
    }

    /// The public key as a JSON Web Key Set, as `/common/discovery/v2.0/keys` serves it.
    pub fn jwks(&self) -> Value {
        let (kid, key) = self.key();
        let public: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = key.public_key().into();
        json!({"keys": [{
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "x5t": kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
        }]})
    }

    /// A signed token with `claims` (the shape of sample 04).
    pub fn sign(&self, claims: &TokenClaims) -> String {
        let (kid, key) = self.key();
        let issuer = claims
            .issuer
            .clone()
            .unwrap_or_else(|| format!("https://sts.windows.net/{}/", claims.tenant));
        let body = json!({
            "aud": claims.audience,
            "iss": issuer,
            "iat": claims.issued_at,
            "nbf": claims.issued_at,
            "exp": claims.expires_at,
            "aio": crate::world::random_secret(28),
            "appid": claims.app_id,
            "appidacr": "2",
            "idp": issuer,
            "tid": claims.tenant,
            "uti": crate::world::random_secret(22),
            "ver": "1.0",
        });
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": kid, "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body.to_string())
        );
        let mut signature = vec![0u8; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .expect("RSA signing works");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Reads one DER element at the start of `input`: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The `SubjectPublicKeyInfo` of an X.509 certificate (RFC 5280 §4.1), as DER.
fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // version [0] (optional), serialNumber, signature, issuer, validity, subject, then the key.
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    for _ in 0..5 {
        tbs = der_element(tbs)?.2;
    }
    let whole = tbs;
    let (tag, _, rest) = der_element(tbs)?;
    (tag == SEQUENCE).then(|| &whole[..whole.len() - rest.len()])
}

/// The subscriber's certificate, checked when the subscription is created.
pub struct Certificate {
    key: OaepPublicEncryptingKey,
    thumbprint: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses `encryptionCertificate` (base64 DER); `None` when it holds no usable RSA key.
    pub fn parse(base64_der: &str) -> Option<Self> {
        let der = STANDARD.decode(base64_der.trim()).ok()?;
        let spki = subject_public_key_info(&der)?;
        let public = PublicEncryptingKey::from_der(spki).ok()?;
        if !(2048..=4096).contains(&public.key_size_bits()) {
            return None;
        }
        let thumbprint = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Some(Self {
            key: OaepPublicEncryptingKey::new(public).ok()?,
            thumbprint,
        })
    }

    /// `encryptedContent` for `resource` under this certificate.
    pub fn encrypt(&self, certificate_id: &str, resource: &Value) -> Value {
        let random = SystemRandom::new();
        let mut key = [0u8; 32];
        random.fill(&mut key).expect("the system has randomness");
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&key[..16]);
        let cipher = PaddedBlockEncryptingKey::cbc_pkcs7(
            UnboundCipherKey::new(&AES_256, &key).expect("a 256-bit key"),
        )
        .expect("AES-CBC is available");
        let mut data = resource.to_string().into_bytes();
        cipher
            .less_safe_encrypt(&mut data, EncryptionContext::Iv128(iv.into()))
            .expect("AES-CBC encrypts");
        let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &data);
        let mut sealed = vec![0u8; self.key.ciphertext_size()];
        let sealed = self
            .key
            .encrypt(&OAEP_SHA1_MGF1SHA1, &key, &mut sealed, None)
            .expect("RSA-OAEP encrypts 32 bytes");
        json!({
            "data": STANDARD.encode(&data),
            "dataSignature": STANDARD.encode(signature.as_ref()),
            "dataKey": STANDARD.encode(sealed),
            "encryptionCertificateId": certificate_id,
            "encryptionCertificateThumbprint": self.thumbprint,
        })
    }
}

/// `resource` reduced to the properties a rich subscription's `$select` names (Outlook
/// resources must name them), keeping the OData annotations and the id.
pub fn selected(resource: &Value, subscription_resource: &str) -> Value {
    let Some(select) = subscription_resource
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("$select="))
        })
    else {
        return resource.clone();
    };
    let wanted: Vec<&str> = select.split(',').map(str::trim).collect();
    let Some(fields) = resource.as_object() else {
        return resource.clone();
    };
    Value::Object(
        fields
            .iter()
            .filter(|(key, _)| {
                key.starts_with('@') || key.as_str() == "id" || wanted.contains(&key.as_str())
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_an_rsa_key_is_refused() {
        assert!(Certificate::parse("bm90IGEgY2VydGlmaWNhdGU=").is_none());
        assert!(Certificate::parse("!!").is_none());
    }

    #[test]
    fn select_keeps_the_named_fields_the_id_and_annotations() {
        let message =
            json!({"id": "m", "@odata.etag": "e", "subject": "s", "body": {"content": "b"}});
        assert_eq!(
            selected(&message, "users/u/messages?$select=subject"),
            json!({"id": "m", "@odata.etag": "e", "subject": "s"})
        );
        assert_eq!(selected(&message, "chats/c/messages"), message);
    }

    #[test]
    fn tokens_verify_with_the_published_key() {
        let signer = TokenSigner::default();
        let token = signer.sign(&TokenClaims::for_delivery(
            "t",
            "app",
            OffsetDateTime::now_utc(),
        ));
        let jwks = signer.jwks();
        let n = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["n"].as_str().unwrap())
            .unwrap();
        let e = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["e"].as_str().unwrap())
            .unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .unwrap();
    }
}
