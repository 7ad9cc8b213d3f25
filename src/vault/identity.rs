//! The client of the Microsoft identity platform v2.0 token endpoints: client credentials,
//! refresh tokens, device code. Classifies every failure into a stable reason code and the
//! connection status it leads to.
//!
//! Owns no tables. Invariants: secrets and tokens travel only in request bodies and
//! [`Secret`] values, never in URLs, errors or logs; errors keep Microsoft's `error`, AADSTS
//! codes and `suberror`, never `error_description` (it may echo request values).
//! Sources: https://learn.microsoft.com/entra/identity-platform/reference-error-codes and the
//! v2-oauth2-* flow pages.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::Secret;
use crate::vault::connections::Status;

/// Microsoft Graph's resource URI in the global cloud (the default; a configured client asks
/// for its cloud's: [`IdentityClient::configured`]).
pub const GRAPH_RESOURCE: &str = crate::config::Cloud::Global.graph_resource();
/// The Teams Developer Portal's resource URI.
pub const DEV_PORTAL_RESOURCE: &str = "https://dev.teams.microsoft.com";

/// A successful token response.
#[derive(Debug)]
pub struct Tokens {
    /// The access token.
    pub access_token: Secret<String>,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// A new refresh token (delegated flows with `offline_access`).
    pub refresh_token: Option<Secret<String>>,
    /// Granted scopes (delegated flows).
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<u32>,
    #[serde(default)]
    suberror: Option<String>,
}

/// Why a token request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The identity platform refused, with its error and AADSTS codes.
    #[error("token request refused: {error} (AADSTS{codes}){suberror}", codes = codes_text(.codes), suberror = .suberror.as_ref().map(|s| format!(", {s}")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// AADSTS codes.
        codes: Vec<u32>,
        /// `suberror`.
        suberror: Option<String>,
    },
    /// No answer (connection, timeout) or a 5xx.
    #[error("identity platform unavailable: {0}")]
    Unavailable(String),
    /// An answer that is not a token response.
    #[error("unexpected answer from the identity platform (HTTP {0})")]
    Malformed(u16),
}

fn codes_text(codes: &[u32]) -> String {
    codes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl TokenError {
    /// OAuth's `invalid_grant` with codes that mean the presented code is bad: unknown,
    /// expired (AADSTS70008), already redeemed (54005), malformed (9002313, 70000), or not
    /// matching its redirect URI (50011) or PKCE challenge (501481). For a refresh token the
    /// same `error` means other things (see [`TokenError::reason_code`]).
    pub fn is_bad_authorization_code(&self) -> bool {
        self.error() == "invalid_grant"
            && [70008, 54005, 9002313, 70000, 50011, 501481]
                .iter()
                .any(|code| self.has(*code))
    }

    fn has(&self, code: u32) -> bool {
        matches!(self, TokenError::Refused { codes, .. } if codes.contains(&code))
    }

    fn error(&self) -> &str {
        match self {
            TokenError::Refused { error, .. } => error,
            _ => "",
        }
    }

    /// The stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            TokenError::Unavailable(_) => "identity_unavailable",
            TokenError::Malformed(_) => "identity_malformed_answer",
            TokenError::Refused { .. } if self.has(65001) || self.error() == "consent_required" => {
                "consent_required"
            }
            TokenError::Refused { .. }
                if [50076, 50079, 50078, 50074, 53003, 70043]
                    .iter()
                    .any(|c| self.has(*c))
                    || self.error() == "interaction_required" =>
            {
                "interaction_required"
            }
            TokenError::Refused { .. }
                if self.has(700082) || self.has(70008) || self.has(700084) =>
            {
                "refresh_token_expired"
            }
            TokenError::Refused { .. } if self.has(50173) || self.has(50132) || self.has(50133) => {
                "refresh_token_revoked"
            }
            TokenError::Refused { .. }
                if self.has(7000215) || self.has(7000222) || self.error() == "invalid_client" =>
            {
                "client_secret_invalid"
            }
            TokenError::Refused { .. } if self.has(700016) || self.has(500011) => {
                "app_not_in_tenant"
            }
            TokenError::Refused { .. } if self.has(90002) => "tenant_not_found",
            TokenError::Refused { .. } if self.has(50057) => "user_disabled",
            TokenError::Refused { .. }
                if self.error() == "temporarily_unavailable" || self.has(90055) =>
            {
                "identity_unavailable"
            }
            TokenError::Refused { .. } => "token_request_failed",
        }
    }

    /// The connection status this failure leads to; `None` for transient failures (the
    /// connection stays as it is and the request is retried).
    pub fn status(&self) -> Option<Status> {
        match self.reason_code() {
            "identity_unavailable" | "identity_malformed_answer" => None,
            "consent_required" | "app_not_in_tenant" => Some(Status::ConsentRequired),
            "interaction_required" => Some(Status::InteractionRequired),
            "refresh_token_expired" | "refresh_token_revoked" | "user_disabled" => {
                Some(Status::NeedsReconsent)
            }
            _ => Some(Status::Error),
        }
    }

    /// A consent failure that an admin consent fixes (65001, `consent_required`, 700016).
    pub fn is_consent(&self) -> bool {
        self.status() == Some(Status::ConsentRequired)
    }
}

/// The state of a device code sign-in.
#[derive(Debug)]
pub enum DevicePoll {
    /// Keep polling after the interval.
    Pending,
    /// Polling too fast: the interval grows by 5 seconds (RFC 8628 §3.5).
    SlowDown,
    /// Signed in.
    Done(Tokens),
}

/// A started device code sign-in.
#[derive(Debug, Deserialize)]
pub struct DeviceCode {
    /// What the user types.
    pub user_code: String,
    /// What the client polls with.
    pub device_code: Secret<String>,
    /// Where the user goes.
    pub verification_uri: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
    /// The text to show.
    pub message: String,
}

/// An authorization code to redeem.
#[derive(Debug, Clone, Copy)]
pub struct CodeRedemption<'a> {
    /// Tenant the flow was started in.
    pub tenant: &'a str,
    /// Client id.
    pub client_id: &'a str,
    /// Client secret of a confidential app.
    pub secret: Option<&'a str>,
    /// The code from the redirect.
    pub code: &'a str,
    /// The redirect URI the flow used.
    pub redirect_uri: &'a str,
    /// The PKCE verifier.
    pub verifier: &'a str,
    /// Scopes.
    pub scope: &'a str,
}

/// The token endpoint client.
#[derive(Debug, Clone)]
pub struct IdentityClient {
    http: reqwest::Client,
    authority: Url,
    /// The audience Graph tokens are asked for (`graph.cloud`'s Graph, or the Graph host of
    /// `graph.base_url`).
    graph_resource: String,
}

impl IdentityClient {
    /// A client for `authority` (e.g. `https://login.microsoftonline.com`).
    pub fn new(authority: Url) -> Self {
        let http = crate::tls::client_builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tenantd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS client builds");
        Self {
            http,
            authority,
            graph_resource: GRAPH_RESOURCE.to_string(),
        }
    }

    /// A client for the configured authority that asks for the configured cloud's Graph.
    pub fn configured(config: &crate::config::Config) -> Self {
        Self::new(config.identity.authority.clone())
            .with_graph_resource(config.graph.token_resource())
    }

    /// The same client asking for Graph tokens of `resource` (e.g. `https://graph.microsoft.us`).
    pub fn with_graph_resource(mut self, resource: impl Into<String>) -> Self {
        self.graph_resource = resource.into();
        self
    }

    /// The audience of this client's Graph tokens.
    pub fn graph_resource(&self) -> &str {
        &self.graph_resource
    }

    fn endpoint(&self, tenant: &str, leaf: &str) -> String {
        format!(
            "{}/{tenant}/oauth2/v2.0/{leaf}",
            self.authority.as_str().trim_end_matches('/')
        )
    }

    /// The v2.0 admin consent URL.
    pub fn admin_consent_url(
        &self,
        tenant: &str,
        client_id: &str,
        redirect_uri: &str,
        state: &str,
    ) -> String {
        let mut url = Url::parse(&format!(
            "{}/{tenant}/v2.0/adminconsent",
            self.authority.as_str().trim_end_matches('/')
        ))
        .expect("authority is a URL");
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("scope", &format!("{}/.default", self.graph_resource))
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state);
        url.to_string()
    }

    async fn post(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<reqwest::Response, TokenError> {
        let response = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            // The error may name the URL (tenant only) but never the form.
            .map_err(|err| TokenError::Unavailable(err.without_url().to_string()))?;
        if response.status().is_server_error() {
            return Err(TokenError::Unavailable(format!(
                "HTTP {}",
                response.status().as_u16()
            )));
        }
        Ok(response)
    }

    async fn tokens(response: reqwest::Response) -> Result<Tokens, TokenError> {
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| TokenError::Unavailable(err.to_string()))?;
        if status == 200 {
            let body: TokenBody =
                serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(status))?;
            let expires_in = match body.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
                _ => 0,
            };
            return Ok(Tokens {
                access_token: Secret::new(body.access_token),
                expires_in,
                refresh_token: body.refresh_token.map(Secret::new),
                scope: body.scope,
            });
        }
        let body: ErrorBody =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(status))?;
        if body.error.is_empty() {
            return Err(TokenError::Malformed(status));
        }
        Err(TokenError::Refused {
            status,
            error: body.error,
            codes: body.error_codes,
            suberror: body.suberror,
        })
    }

    /// App-only token for `resource` (`{resource}/.default`).
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn client_credentials(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &str,
        resource: &str,
    ) -> Result<Tokens, TokenError> {
        let scope = format!("{resource}/.default");
        let response = self
            .post(
                &self.endpoint(tenant, "token"),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", secret),
                    ("scope", &scope),
                ],
            )
            .await?;
        Self::tokens(response).await
    }

    /// Redeems a refresh token; Microsoft returns a new one each time.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn refresh(
        &self,
        tenant: &str,
        client_id: &str,
        secret: Option<&str>,
        refresh_token: &str,
        scope: &str,
    ) -> Result<Tokens, TokenError> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token),
            ("scope", scope),
        ];
        if let Some(secret) = secret {
            form.push(("client_secret", secret));
        }
        let response = self.post(&self.endpoint(tenant, "token"), &form).await?;
        Self::tokens(response).await
    }

    /// The authorization URL of the authorization code flow with PKCE (S256).
    pub fn authorize_url(
        &self,
        tenant: &str,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        code_challenge: &str,
    ) -> String {
        let mut url = Url::parse(&self.endpoint(tenant, "authorize")).expect("authority is a URL");
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    /// Redeems an authorization code with its PKCE verifier.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn authorization_code(
        &self,
        redeem: CodeRedemption<'_>,
    ) -> Result<Tokens, TokenError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", redeem.client_id),
            ("code", redeem.code),
            ("redirect_uri", redeem.redirect_uri),
            ("code_verifier", redeem.verifier),
            ("scope", redeem.scope),
        ];
        if let Some(secret) = redeem.secret {
            form.push(("client_secret", secret));
        }
        let response = self
            .post(&self.endpoint(redeem.tenant, "token"), &form)
            .await?;
        Self::tokens(response).await
    }

    /// Starts a device code sign-in.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn start_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<DeviceCode, TokenError> {
        let response = self
            .post(
                &self.endpoint(tenant, "devicecode"),
                &[("client_id", client_id), ("scope", scope)],
            )
            .await?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| TokenError::Unavailable(err.to_string()))?;
        if status == 200 {
            return serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(status));
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(TokenError::Refused {
            status,
            error: body.error,
            codes: body.error_codes,
            suberror: body.suberror,
        })
    }

    /// Polls a device code once.
    ///
    /// # Errors
    /// [`TokenError`]: `expired_token`, `authorization_declined` and others end the sign-in.
    pub async fn poll_device_code(
        &self,
        tenant: &str,
        client_id: &str,
        device_code: &str,
    ) -> Result<DevicePoll, TokenError> {
        let response = self
            .post(
                &self.endpoint(tenant, "token"),
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", client_id),
                    ("device_code", device_code),
                ],
            )
            .await?;
        match Self::tokens(response).await {
            Ok(tokens) => Ok(DevicePoll::Done(tokens)),
            Err(TokenError::Refused { ref error, .. }) if error == "authorization_pending" => {
                Ok(DevicePoll::Pending)
            }
            Err(TokenError::Refused { ref error, .. }) if error == "slow_down" => {
                Ok(DevicePoll::SlowDown)
            }
            Err(other) => Err(other),
        }
    }
}

/// The claims of a JWT-shaped access token, unverified (for display: roles, scopes, expiry).
pub fn token_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let body = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(error: &str, codes: &[u32]) -> TokenError {
        TokenError::Refused {
            status: 400,
            error: error.into(),
            codes: codes.to_vec(),
            suberror: None,
        }
    }

    #[test]
    fn failures_map_to_reason_codes_and_statuses() {
        let cases = [
            (
                refused("invalid_grant", &[65001]),
                "consent_required",
                Some(Status::ConsentRequired),
            ),
            (
                refused("consent_required", &[]),
                "consent_required",
                Some(Status::ConsentRequired),
            ),
            (
                refused("invalid_grant", &[50076]),
                "interaction_required",
                Some(Status::InteractionRequired),
            ),
            (
                refused("invalid_grant", &[53003]),
                "interaction_required",
                Some(Status::InteractionRequired),
            ),
            (
                refused("interaction_required", &[]),
                "interaction_required",
                Some(Status::InteractionRequired),
            ),
            (
                refused("invalid_grant", &[700082]),
                "refresh_token_expired",
                Some(Status::NeedsReconsent),
            ),
            (
                refused("invalid_grant", &[50173]),
                "refresh_token_revoked",
                Some(Status::NeedsReconsent),
            ),
            (
                refused("invalid_client", &[7000215]),
                "client_secret_invalid",
                Some(Status::Error),
            ),
            (
                refused("unauthorized_client", &[700016]),
                "app_not_in_tenant",
                Some(Status::ConsentRequired),
            ),
            (
                refused("invalid_request", &[90002]),
                "tenant_not_found",
                Some(Status::Error),
            ),
            (
                TokenError::Unavailable("timeout".into()),
                "identity_unavailable",
                None,
            ),
            (
                refused("temporarily_unavailable", &[]),
                "identity_unavailable",
                None,
            ),
        ];
        for (error, reason, status) in cases {
            assert_eq!(error.reason_code(), reason, "{error:?}");
            assert_eq!(error.status(), status, "{error:?}");
        }
        assert_eq!(
            refused("invalid_grant", &[65001]).to_string(),
            "token request refused: invalid_grant (AADSTS65001)"
        );
    }
}
