//! The trust tenantd's HTTP clients use: the Mozilla root certificates bundled at build time
//! (`webpki-root-certs`), on rustls with aws-lc-rs (docs/decisions/0010-rich-notification-crypto.md).
//!
//! Owns no tables. Invariant: every reqwest client tenantd builds starts from
//! [`client_builder`], so none depends on the machine's trust store: reqwest 0.13 would
//! otherwise read the system's CA bundle and refuse to build a client (even for plain HTTP)
//! on a machine or image without one.

use std::sync::LazyLock;

/// The bundled roots, parsed once.
static ROOTS: LazyLock<Vec<reqwest::Certificate>> = LazyLock::new(|| {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect()
});

/// A reqwest client builder trusting the bundled roots only.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only(ROOTS.iter().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_roots_parse_and_a_client_builds_without_a_system_trust_store() {
        assert!(ROOTS.len() > 100, "{} roots", ROOTS.len());
        // Without a system trust store: tests/daemon/process.rs (healthcheck test).
        client_builder().build().expect("a client builds");
    }
}
