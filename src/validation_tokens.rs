//! The `validationTokens` of rich notifications: JWTs the identity platform issues to Graph's
//! change tracking, one per application and tenant in a delivery. A token passes only when
//! it is RS256, signed by a key the identity platform publishes (`{authority}/common/
//! discovery/v2.0/keys`, cached, fetched again for an unknown key id at most every five
//! minutes), neither expired nor early (five minutes' leeway for clock skew), issued for its
//! tenant (`https://sts.windows.net/{tid}/` or `{authority}/{tid}/v2.0`), and published by
//! Graph's change-tracking app (`appid`, or `azp` in v2.0 tokens, is
//! `0bf30f3b-4a52-48df-9a82-234910c4a086`). Which audiences are tenantd's is the caller's
//! business (the tenant's app ids). Sources: graph-protocol.md §2.4.
//!
//! The signature and decoding are jsonwebtoken's (RS256 pinned); the time, issuer and
//! publisher checks are made here, with the caller's clock.
//!
//! Owns no tables. Invariants: keys are fetched by one caller at a time; a failed fetch keeps
//! the keys already known; nothing from a token is trusted before its signature checks out.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::time::Instant;

/// The application Graph's change tracking signs in as.
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// Leeway for clocks that disagree.
const LEEWAY_SECONDS: i64 = 300;
/// How often keys may be fetched again for a key id not seen before.
const REFETCH_AFTER: Duration = Duration::from_secs(300);
/// Keys are fetched again after this even when every key id is known (Microsoft rolls keys).
const KEYS_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest a key fetch may take: it can sit in a webhook request, which Graph gives 3 s.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationTokenError {
    /// Not a JWT.
    #[error("the validation token is not a JWT")]
    Malformed,
    /// Not RS256.
    #[error("the validation token is not signed with RS256")]
    Algorithm,
    /// Signed with a key the identity platform does not publish.
    #[error("the validation token is signed with an unknown key")]
    UnknownKey,
    /// The signature does not match.
    #[error("the validation token's signature does not match")]
    Signature,
    /// Past `exp`.
    #[error("the validation token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the validation token is not valid yet")]
    NotYetValid,
    /// `iss` is not the tenant's.
    #[error("the validation token was not issued for its tenant")]
    Issuer,
    /// Not published by Graph's change tracking.
    #[error("the validation token was not issued to Graph's change tracking")]
    Publisher,
    /// The signing keys could not be fetched.
    #[error("the identity platform's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl ValidationTokenError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            ValidationTokenError::Malformed => "validation_token_malformed",
            ValidationTokenError::Algorithm => "validation_token_algorithm",
            ValidationTokenError::UnknownKey => "validation_token_unknown_key",
            ValidationTokenError::Signature => "validation_token_signature",
            ValidationTokenError::Expired => "validation_token_expired",
            ValidationTokenError::NotYetValid => "validation_token_not_yet_valid",
            ValidationTokenError::Issuer => "validation_token_issuer",
            ValidationTokenError::Publisher => "validation_token_publisher",
            ValidationTokenError::KeysUnavailable(_) => "signing_keys_unavailable",
        }
    }
}

/// What a valid token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    /// `tid`.
    pub tenant_id: String,
    /// `aud`: the application the notifications are for.
    pub audience: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    /// The last successful fetch.
    fetched_at: Option<Instant>,
    /// The last fetch tried, successful or not (fetches are spaced by this).
    attempted_at: Option<Instant>,
}

/// Validates validation tokens against the identity platform's published keys.
pub struct TokenValidator {
    client: reqwest::Client,
    authority: String,
    keys: std::sync::RwLock<Keys>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

fn part<T: serde::de::DeserializeOwned>(encoded: &str) -> Result<T, ValidationTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| ValidationTokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ValidationTokenError::Malformed)
}

impl TokenValidator {
    /// A validator for tokens of the identity platform at `authority`
    /// (`https://login.microsoftonline.com`).
    pub fn new(authority: &url::Url) -> Self {
        Self {
            client: crate::tls::client_builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("a client with the bundled roots builds"),
            authority: authority.as_str().trim_end_matches('/').to_string(),
            keys: std::sync::RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key `kid` as last fetched; with `fresh_only`, only while the keys are under a day
    /// old.
    fn lookup(&self, kid: &str, fresh_only: bool) -> Option<DecodingKey> {
        let keys = self.keys.read().expect("keys lock");
        let fresh = keys
            .fetched_at
            .is_some_and(|at| at.elapsed() < KEYS_LIFETIME);
        keys.by_id
            .get(kid)
            .filter(|_| fresh || !fresh_only)
            .cloned()
    }

    /// The key `kid`, fetching the published keys when it is not known (at most every five
    /// minutes) or the known ones are a day old. When a fetch fails, a key already known is
    /// still used.
    async fn key(&self, kid: &str) -> Result<DecodingKey, ValidationTokenError> {
        if let Some(key) = self.lookup(kid, true) {
            return Ok(key);
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(key) = self.lookup(kid, true) {
            return Ok(key);
        }
        let (tried_recently, last_failed) = {
            let keys = self.keys.read().expect("keys lock");
            (
                keys.attempted_at
                    .is_some_and(|at| at.elapsed() < REFETCH_AFTER),
                keys.attempted_at != keys.fetched_at,
            )
        };
        if tried_recently {
            return self.lookup(kid, false).ok_or_else(|| {
                if last_failed {
                    ValidationTokenError::KeysUnavailable("the last fetch failed".into())
                } else {
                    ValidationTokenError::UnknownKey
                }
            });
        }
        match self.fetch().await {
            Ok(()) => self
                .lookup(kid, false)
                .ok_or(ValidationTokenError::UnknownKey),
            Err(err) => {
                tracing::warn!(reason = err.reason_code(), error = %err, "fetching the identity platform's signing keys failed");
                self.lookup(kid, false).ok_or(err)
            }
        }
    }

    async fn fetch(&self) -> Result<(), ValidationTokenError> {
        self.keys.write().expect("keys lock").attempted_at = Some(Instant::now());
        let url = format!("{}/common/discovery/v2.0/keys", self.authority);
        let unavailable =
            |err: &dyn std::fmt::Display| ValidationTokenError::KeysUnavailable(err.to_string());
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|err| unavailable(&err.without_url()))?;
        if !response.status().is_success() {
            return Err(unavailable(&format!("status {}", response.status())));
        }
        let set: KeySet = response
            .json()
            .await
            .map_err(|err| unavailable(&err.without_url()))?;
        let mut by_id = HashMap::new();
        for key in set.keys {
            if key.kty.as_deref() != Some("RSA") {
                continue;
            }
            let (Some(id), Some(n), Some(e)) = (key.kid, key.n, key.e) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_rsa_components(&n, &e) {
                by_id.insert(id, key);
            }
        }
        let mut keys = self.keys.write().expect("keys lock");
        keys.by_id = by_id;
        keys.fetched_at = keys.attempted_at;
        Ok(())
    }

    /// Checks `token` as of `now` (Unix seconds).
    ///
    /// # Errors
    /// [`ValidationTokenError`] naming the first check that failed.
    pub async fn validate(
        &self,
        token: &str,
        now: i64,
    ) -> Result<ValidToken, ValidationTokenError> {
        let mut parts = token.trim().split('.');
        let (Some(head), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ValidationTokenError::Malformed);
        };
        let header: Header = part(head)?;
        if header.alg != "RS256" {
            return Err(ValidationTokenError::Algorithm);
        }
        let kid = header.kid.ok_or(ValidationTokenError::UnknownKey)?;
        let key = self.key(&kid).await?;
        // The signature (RS256 only) and the decoding are jsonwebtoken's; the time checks
        // below take `now` from the caller, and the issuer and publisher depend on `tid`.
        let mut signature_only = Validation::new(Algorithm::RS256);
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        signature_only.validate_aud = false;
        signature_only.required_spec_claims.clear();
        let claims: Claims = jsonwebtoken::decode(token.trim(), &key, &signature_only)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    ValidationTokenError::Signature
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    ValidationTokenError::Algorithm
                }
                _ => ValidationTokenError::Malformed,
            })?
            .claims;
        if claims.exp.is_none_or(|exp| now > exp + LEEWAY_SECONDS) {
            return Err(ValidationTokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
            return Err(ValidationTokenError::NotYetValid);
        }
        let tenant = claims.tid.ok_or(ValidationTokenError::Issuer)?;
        // v1.0 tokens (Graph's published example) and v2.0 tokens of the configured
        // authority, which follows `graph.cloud`.
        let issuers = [
            format!("https://sts.windows.net/{tenant}/"),
            format!("{}/{tenant}/v2.0", self.authority),
        ];
        if !claims.iss.is_some_and(|iss| issuers.contains(&iss)) {
            return Err(ValidationTokenError::Issuer);
        }
        let publisher = claims.appid.or(claims.azp);
        if publisher.as_deref() != Some(CHANGE_TRACKING_APP_ID) {
            return Err(ValidationTokenError::Publisher);
        }
        Ok(ValidToken {
            tenant_id: tenant.to_ascii_lowercase(),
            audience: claims.aud.unwrap_or_default(),
        })
    }
}
