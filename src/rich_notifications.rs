//! Rich notifications (`includeResourceData`): the encryption certificate of each such
//! subscription (self-signed RSA-2048, made here; its key is sealed by the vault in
//! `subscriptions`), and opening Graph's `encryptedContent`: `dataKey` is decrypted with the
//! certificate's key (RSA-OAEP with SHA-1, as Graph encrypts it), `dataSignature` (HMAC-SHA256
//! of the encrypted `data` under that key) is checked, and only then is `data` decrypted
//! (AES-256-CBC with PKCS#7 padding, the IV being the key's first 16 bytes). Sources:
//! graph-protocol.md §2.3, learn.microsoft.com/graph/change-notifications-with-resource-data.
//!
//! Owns no tables. Invariants: nothing is decrypted whose signature does not match (compared
//! in constant time); symmetric keys and private keys are zeroized after use and never appear
//! in logs, errors or Debug output. Why aws-lc-rs: docs/decisions/0010.

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1};
use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

/// How long a new certificate is valid. Graph does not check the issuer; a subscription's
/// certificate lives as long as its row.
const VALIDITY_DAYS: i64 = 3650;

/// Why a certificate could not be made or an `encryptedContent` opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RichError {
    /// Making the key or certificate failed.
    #[error("the encryption certificate could not be made: {0}")]
    Certificate(String),
    /// A stored key does not parse.
    #[error("the subscription's encryption key is unusable")]
    Key,
    /// A field is missing or not base64.
    #[error("the encrypted content is malformed: {0}")]
    Malformed(&'static str),
    /// The content names a certificate this subscription does not have.
    #[error("the encrypted content names another certificate")]
    UnknownCertificate,
    /// No `dataSignature`.
    #[error("the encrypted content carries no dataSignature")]
    SignatureMissing,
    /// `dataKey` does not decrypt with the subscription's key.
    #[error("the dataKey does not decrypt with the subscription's key")]
    DataKey,
    /// `dataSignature` does not match `data`.
    #[error("the dataSignature does not match the data")]
    Signature,
    /// `data` does not decrypt to JSON.
    #[error("the data does not decrypt to JSON")]
    Data,
}

impl RichError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            RichError::Certificate(_) => "encryption_certificate_failed",
            RichError::Key => "encryption_key_invalid",
            RichError::Malformed(_) => "encrypted_content_malformed",
            RichError::UnknownCertificate => "encryption_certificate_unknown",
            RichError::SignatureMissing => "data_signature_missing",
            RichError::DataKey => "data_key_invalid",
            RichError::Signature => "data_signature_invalid",
            RichError::Data => "data_invalid",
        }
    }
}

/// A new encryption certificate for a subscription.
pub struct EncryptionCertificate {
    /// `encryptionCertificateId` (at most 128 characters, Graph's limit).
    pub id: String,
    /// `encryptionCertificate`: the certificate, DER in base64 (public).
    pub certificate: String,
    /// The RSA key, PKCS#8 DER (to be sealed by the vault).
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for EncryptionCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionCertificate")
            .field("id", &self.id)
            .field("key_pkcs8", &crate::secret::REDACTED)
            .finish_non_exhaustive()
    }
}

/// Makes an RSA-2048 key and a self-signed certificate for subscription `subscription_id`.
///
/// # Errors
/// [`RichError::Certificate`] when the crypto library fails.
pub fn new_certificate(subscription_id: &str) -> Result<EncryptionCertificate, RichError> {
    let failed = |err: rcgen::Error| RichError::Certificate(err.to_string());
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("tenantd subscription {subscription_id}"),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let certificate = params.self_signed(&key).map_err(failed)?;
    Ok(EncryptionCertificate {
        id: format!("tenantd-{subscription_id}"),
        certificate: STANDARD.encode(certificate.der()),
        key_pkcs8: Zeroizing::new(key.serialize_der()),
    })
}

/// The hexadecimal SHA-1 thumbprint Graph writes as `encryptionCertificateThumbprint`.
///
/// # Errors
/// [`RichError::Malformed`] when `certificate` is not base64.
pub fn thumbprint(certificate: &str) -> Result<String, RichError> {
    let der = STANDARD
        .decode(certificate)
        .map_err(|_| RichError::Malformed("encryptionCertificate"))?;
    let digest = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02X}")).collect())
}

/// `encryptedContent` as Graph sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedContent {
    /// Base64 of the AES-encrypted resource.
    #[serde(default)]
    pub data: Option<String>,
    /// Base64 of the RSA-encrypted symmetric key.
    #[serde(default)]
    pub data_key: Option<String>,
    /// Base64 of HMAC-SHA256(key, data).
    #[serde(default)]
    pub data_signature: Option<String>,
    /// Which certificate encrypted `dataKey`.
    #[serde(default)]
    pub encryption_certificate_id: Option<String>,
    /// Its thumbprint.
    #[serde(default)]
    pub encryption_certificate_thumbprint: Option<String>,
}

/// A subscription's decryption key with the id of its certificate.
pub struct DecryptionKey {
    certificate_id: String,
    key: OaepPrivateDecryptingKey,
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("certificate_id", &self.certificate_id)
            .field("key", &crate::secret::REDACTED)
            .finish()
    }
}

fn decode(field: &'static str, value: Option<&str>) -> Result<Vec<u8>, RichError> {
    STANDARD
        .decode(value.ok_or(RichError::Malformed(field))?)
        .map_err(|_| RichError::Malformed(field))
}

impl DecryptionKey {
    /// The key of certificate `certificate_id` from its PKCS#8 DER.
    ///
    /// # Errors
    /// [`RichError::Key`] when it does not parse.
    pub fn from_pkcs8(certificate_id: &str, pkcs8: &[u8]) -> Result<Self, RichError> {
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| RichError::Key)?;
        Ok(Self {
            certificate_id: certificate_id.to_string(),
            key: OaepPrivateDecryptingKey::new(private).map_err(|_| RichError::Key)?,
        })
    }

    /// The resource in `content`, once its signature is checked.
    ///
    /// # Errors
    /// [`RichError`] naming what is wrong; nothing is decrypted past a failed check.
    pub fn open(&self, content: &EncryptedContent) -> Result<serde_json::Value, RichError> {
        if let Some(id) = &content.encryption_certificate_id {
            if id != &self.certificate_id {
                return Err(RichError::UnknownCertificate);
            }
        }
        let sealed_key = decode("dataKey", content.data_key.as_deref())?;
        let data = decode("data", content.data.as_deref())?;
        let signature = match content.data_signature.as_deref() {
            Some(signature) => decode("dataSignature", Some(signature))?,
            None => return Err(RichError::SignatureMissing),
        };
        let mut buffer = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let symmetric = Zeroizing::new(
            self.key
                .decrypt(&OAEP_SHA1_MGF1SHA1, &sealed_key, &mut buffer, None)
                .map_err(|_| RichError::DataKey)?
                .to_vec(),
        );
        if symmetric.len() != 32 {
            return Err(RichError::DataKey);
        }
        // Constant-time comparison of the MAC.
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &symmetric),
            &data,
            &signature,
        )
        .map_err(|_| RichError::Signature)?;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&symmetric[..16]);
        let cipher = UnboundCipherKey::new(&AES_256, &symmetric).map_err(|_| RichError::Data)?;
        let cipher = PaddedBlockDecryptingKey::cbc_pkcs7(cipher).map_err(|_| RichError::Data)?;
        let mut plain = Zeroizing::new(data);
        let plain = cipher
            .decrypt(&mut plain, DecryptionContext::Iv128(iv.into()))
            .map_err(|_| RichError::Data)?;
        serde_json::from_slice(plain).map_err(|_| RichError::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_certificate_has_a_usable_key_and_a_thumbprint() {
        let made = new_certificate("s1").unwrap();
        assert_eq!(made.id, "tenantd-s1");
        assert!(made.id.len() <= 128);
        assert_eq!(thumbprint(&made.certificate).unwrap().len(), 40);
        let key = DecryptionKey::from_pkcs8(&made.id, &made.key_pkcs8).unwrap();
        let shown = format!("{key:?} {made:?}");
        assert!(shown.contains(crate::secret::REDACTED));
        assert!(
            !shown.contains(&STANDARD.encode(&*made.key_pkcs8)[..40]),
            "no key material in Debug"
        );
        // Content that names another certificate is refused before any decryption.
        let other = EncryptedContent {
            data: Some("AA==".into()),
            data_key: Some("AA==".into()),
            data_signature: Some("AA==".into()),
            encryption_certificate_id: Some("someone-else".into()),
            encryption_certificate_thumbprint: None,
        };
        assert_eq!(key.open(&other), Err(RichError::UnknownCertificate));
        let unsigned = EncryptedContent {
            data_signature: None,
            encryption_certificate_id: Some(made.id.clone()),
            ..other
        };
        assert_eq!(key.open(&unsigned), Err(RichError::SignatureMissing));
    }
}
