//! The Microsoft identity platform v2.0 endpoints of one emulated cloud: token (client
//! credentials, refresh token, device code, authorization code with PKCE), device code,
//! authorize and admin consent.
//!
//! Sources: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
//! .../v2-oauth2-auth-code-flow, .../v2-oauth2-device-code, .../refresh-tokens,
//! .../v2-admin-consent and .../reference-error-codes (error body shape: `error`,
//! `error_description` starting with the AADSTS code, `error_codes`, `timestamp`, `trace_id`,
//! `correlation_id`, `error_uri`, `suberror`).
//!
//! Invariants: client credentials never return a refresh token; every refresh returns a new
//! refresh token and the old one keeps working until it expires (Microsoft does not revoke it);
//! device codes and authorization codes are single use.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::world::{
    guid, random_secret, AuthCode, DeviceCode, DeviceCodeState, IdentityFailure, RefreshGrant,
    Resource, World,
};
use crate::{clock, AppState};

/// Routes of the identity platform.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route("/{tenant}/v2.0/adminconsent", get(admin_consent))
        .route("/{tenant}/adminconsent", get(admin_consent))
        .route("/devicelogin", get(device_login_page))
        // The keys validation tokens are signed with, where Microsoft publishes its own.
        .route("/{tenant}/discovery/v2.0/keys", get(signing_keys))
        .route("/{tenant}/discovery/keys", get(signing_keys))
}

async fn signing_keys(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    axum::Json(state.token_signer.jwks())
}

/// An identity platform error, rendered as Microsoft renders it.
#[derive(Debug, Clone)]
pub struct IdentityError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
    suberror: Option<&'static str>,
}

impl IdentityError {
    fn new(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            code,
            message: message.into(),
            suberror: None,
        }
    }

    fn suberror(mut self, suberror: &'static str) -> Self {
        self.suberror = Some(suberror);
        self
    }

    /// The `error` value.
    pub fn error(&self) -> &'static str {
        self.error
    }

    /// The AADSTS code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The JSON body.
    pub fn body(&self, authority: &str) -> Value {
        let now = clock::now();
        let (trace, correlation) = (guid(), guid());
        let timestamp = clock::identity(now);
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("{authority}/error?code={}", self.code),
        });
        if let Some(suberror) = self.suberror {
            body["suberror"] = json!(suberror);
        }
        if self.code == 50076 || self.code == 53003 {
            // Conditional Access answers carry a claims challenge for the interactive retry.
            body["claims"] = json!(
                r#"{"access_token":{"capolids":{"essential":true,"values":["emulated-policy"]}}}"#
            );
        }
        body
    }
}

/// The error for a switched-on failure.
pub fn failure_error(failure: IdentityFailure, tenant: &str, client_id: &str) -> IdentityError {
    let issued = clock::identity(clock::now() - Duration::days(91));
    match failure {
        IdentityFailure::ConsentRequired => IdentityError::new(
            "invalid_grant",
            65001,
            format!("The user or administrator has not consented to use the application with ID '{client_id}'. Send an interactive authorization request for this user and resource."),
        )
        .suberror("consent_required"),
        IdentityFailure::MfaRequired => IdentityError::new(
            "invalid_grant",
            50076,
            "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.",
        )
        .suberror("basic_action"),
        IdentityFailure::BlockedByConditionalAccess => IdentityError::new(
            "invalid_grant",
            53003,
            "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
        )
        .suberror("message_only"),
        IdentityFailure::RefreshTokenExpired => IdentityError::new(
            "invalid_grant",
            700082,
            format!("The refresh token has expired due to inactivity. The token was issued on {issued} and was inactive for 90.00:00:00."),
        )
        .suberror("bad_token"),
        IdentityFailure::RefreshTokenRevoked => IdentityError::new(
            "invalid_grant",
            50173,
            format!("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{issued}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{}'.", clock::identity(clock::now())),
        )
        .suberror("bad_token"),
        IdentityFailure::BadClientSecret => IdentityError::new(
            "invalid_client",
            7000215,
            format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
        ),
        IdentityFailure::AppNotInTenant => IdentityError::new(
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
        ),
        IdentityFailure::UnknownTenant => IdentityError::new(
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        ),
    }
}

fn error_response(state: &AppState, error: &IdentityError) -> Response {
    state.count(&format!("identity_error_{}", error.code));
    let mut response = (error.status, Json(error.body(&state.base_url))).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        "no-store, no-cache".parse().expect("static"),
    );
    response
}

/// The form of a token request (all grants).
#[derive(Debug, Deserialize, Default)]
pub struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion: Option<String>,
    scope: Option<String>,
    refresh_token: Option<String>,
    device_code: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

fn missing(parameter: &str) -> IdentityError {
    IdentityError::new(
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{parameter}'."),
    )
}

/// HTTP Basic client authentication (RFC 6749 §2.3.1), which the token endpoint also accepts.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// Resolved scopes of a delegated request.
struct ScopeRequest {
    resource: Resource,
    names: BTreeSet<String>,
    offline: bool,
    openid: bool,
}

fn parse_delegated_scopes(
    cloud: crate::world::Cloud,
    scope: &str,
) -> Result<ScopeRequest, IdentityError> {
    let mut resource = None;
    let mut names = BTreeSet::new();
    let (mut offline, mut openid) = (false, false);
    for item in scope.split_whitespace() {
        match item {
            "offline_access" => offline = true,
            "openid" => openid = true,
            "profile" | "email" => {}
            _ => {
                let (res, name) = crate::world::split_permission_in(item, cloud)
                    .ok_or_else(|| invalid_scope(item))?;
                if resource.is_some_and(|r| r != res) {
                    return Err(IdentityError::new(
                        "invalid_request",
                        28000,
                        "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope is not valid.",
                    ));
                }
                resource = Some(res);
                // `{resource}/.default` asks for every consented permission of the resource.
                if name != ".default" {
                    names.insert(name);
                }
            }
        }
    }
    Ok(ScopeRequest {
        resource: resource.unwrap_or(Resource::Graph),
        names,
        offline,
        openid,
    })
}

fn invalid_scope(scope: &str) -> IdentityError {
    IdentityError::new(
        "invalid_scope",
        70011,
        format!("The provided value for the input parameter 'scope' isn't valid. The scope {scope} isn't valid."),
    )
}

struct Issued {
    body: Value,
}

fn ms(now: OffsetDateTime) -> Value {
    json!(clock::unix(now))
}

/// Mints an access token for `resource` with `roles` (app-only) or `scopes` (delegated).
#[allow(clippy::too_many_arguments)]
fn access_token(
    state: &AppState,
    tenant: &str,
    client_id: &str,
    resource: Resource,
    user: Option<(&str, &str)>,
    roles: Option<&BTreeSet<String>>,
    scopes: Option<&BTreeSet<String>>,
    lifetime: u64,
) -> String {
    let now = clock::now();
    let mut claims = Map::new();
    claims.insert("aud".into(), json!(resource.uri_in(state.settings().cloud)));
    claims.insert(
        "iss".into(),
        json!(format!("https://sts.windows.net/{tenant}/")),
    );
    claims.insert("iat".into(), ms(now));
    claims.insert("nbf".into(), ms(now));
    claims.insert(
        "exp".into(),
        ms(now + Duration::seconds(i64::try_from(lifetime).unwrap_or(i64::MAX))),
    );
    claims.insert("tid".into(), json!(tenant));
    claims.insert("appid".into(), json!(client_id));
    claims.insert("azp".into(), json!(client_id));
    claims.insert("ver".into(), json!("1.0"));
    claims.insert("uti".into(), json!(random_secret(22)));
    claims.insert("aio".into(), json!(random_secret(40)));
    claims.insert("appidacr".into(), json!("1"));
    claims.insert(
        "idp".into(),
        json!(format!("https://sts.windows.net/{tenant}/")),
    );
    match user {
        Some((id, upn)) => {
            claims.insert("idtyp".into(), json!("user"));
            claims.insert("oid".into(), json!(id));
            claims.insert("sub".into(), json!(id));
            claims.insert("upn".into(), json!(upn));
            let scp: Vec<&str> = scopes.into_iter().flatten().map(String::as_str).collect();
            claims.insert("scp".into(), json!(scp.join(" ")));
        }
        None => {
            claims.insert("idtyp".into(), json!("app"));
            // The app's service principal in the tenant: a GUID, as in Graph's tokens.
            let principal = crate::world::service_principal_id(tenant, client_id);
            claims.insert("oid".into(), json!(principal));
            claims.insert("sub".into(), json!(principal));
            let roles: Vec<&str> = roles.into_iter().flatten().map(String::as_str).collect();
            if !roles.is_empty() {
                claims.insert("roles".into(), json!(roles));
            }
        }
    }
    state.signer.sign(&claims)
}

/// Tokens for a signed-in user: checks failures and consent, mints access, refresh and ID
/// tokens.
fn issue_delegated(
    state: &AppState,
    world: &mut World,
    tenant: &str,
    client_id: &str,
    user_id: &str,
    scope: &ScopeRequest,
    refresh_failures: bool,
) -> Result<Issued, IdentityError> {
    let tenant_ref = world
        .tenants
        .get(tenant)
        .ok_or_else(|| failure_error(IdentityFailure::UnknownTenant, tenant, client_id))?;
    let user = tenant_ref.users.get(user_id).ok_or_else(|| {
        IdentityError::new(
            "invalid_grant",
            50034,
            "The user account does not exist in the directory.",
        )
    })?;
    if let Some(failure) = world.failure_for(tenant, client_id, Some(user), |f| {
        refresh_failures
            || !matches!(
                f,
                IdentityFailure::RefreshTokenExpired | IdentityFailure::RefreshTokenRevoked
            )
    }) {
        return Err(failure_error(failure, tenant, client_id));
    }
    if user.properties.get("accountEnabled") == Some(&json!(false)) {
        return Err(IdentityError::new(
            "invalid_grant",
            50057,
            "The user account is disabled.",
        ));
    }
    let granted = tenant_ref
        .grants
        .get(client_id)
        .and_then(|grant| grant.scopes.get(&scope.resource))
        .cloned()
        .unwrap_or_default();
    if !tenant_ref.grants.contains_key(client_id) || !scope.names.is_subset(&granted) {
        return Err(failure_error(
            IdentityFailure::ConsentRequired,
            tenant,
            client_id,
        ));
    }
    // Like Microsoft, the token carries every consented scope of the resource, not only the
    // requested ones.
    let settings = state.settings();
    let upn = user.upn.clone();
    let access = access_token(
        state,
        tenant,
        client_id,
        scope.resource,
        Some((user_id, &upn)),
        None,
        Some(&granted),
        settings.access_token_lifetime_seconds,
    );
    let mut scope_list: Vec<String> = granted
        .iter()
        .map(|name| format!("{}/{name}", scope.resource.uri_in(settings.cloud)))
        .collect();
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": settings.access_token_lifetime_seconds,
        "ext_expires_in": settings.access_token_lifetime_seconds,
        "access_token": access,
    });
    if scope.offline {
        scope_list.push("offline_access".into());
        let now = clock::now();
        let refresh = format!("1.{}", random_secret(64));
        world.refresh_tokens.insert(
            refresh.clone(),
            RefreshGrant {
                tenant: tenant.to_string(),
                client_id: client_id.to_string(),
                user_id: user_id.to_string(),
                issued: now,
                expires: now
                    + Duration::seconds(
                        i64::try_from(settings.refresh_token_lifetime_seconds).unwrap_or(i64::MAX),
                    ),
            },
        );
        body["refresh_token"] = json!(refresh);
    }
    if scope.openid {
        let mut claims = Map::new();
        claims.insert("aud".into(), json!(client_id));
        claims.insert(
            "iss".into(),
            json!(format!("{}/{tenant}/v2.0", state.base_url)),
        );
        claims.insert("tid".into(), json!(tenant));
        claims.insert("oid".into(), json!(user_id));
        claims.insert("preferred_username".into(), json!(upn));
        claims.insert("ver".into(), json!("2.0"));
        body["id_token"] = json!(state.signer.sign(&claims));
    }
    body["scope"] = json!(scope_list.join(" "));
    Ok(Issued { body })
}

async fn token(
    State(state): State<AppState>,
    Path(authority): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    match token_inner(&state, &authority, &headers, form) {
        Ok(issued) => {
            state.count("tokens_issued");
            let mut response = Json(issued.body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                "no-store, no-cache".parse().expect("static"),
            );
            response
        }
        Err(error) => error_response(&state, &error),
    }
}

/// The client a token request authenticated as: its id, the tenant of the authority (none
/// for `organizations`/`common`/`consumers`) and whether it is confidential (has secrets).
struct TokenClient {
    client_id: String,
    tenant: Option<String>,
    confidential: bool,
}

fn token_inner(
    state: &AppState,
    authority: &str,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<Issued, IdentityError> {
    let mut world = state.world();
    let client = authenticate_client(&world, authority, headers, &form)?;
    match form.grant_type.as_deref().unwrap_or_default() {
        "client_credentials" => grant_client_credentials(state, &world, authority, client, form),
        "refresh_token" => grant_refresh_token(state, &mut world, authority, client, form),
        "urn:ietf:params:oauth:grant-type:device_code" => {
            grant_device_code(state, &mut world, client, form)
        }
        "authorization_code" => grant_authorization_code(state, &mut world, client, form),
        other => Err(IdentityError::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

/// Who is asking: the client id (form or HTTP Basic), its tenant, and its secret checked where
/// the grant needs one (or one was sent anyway).
fn authenticate_client(
    world: &World,
    authority: &str,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<TokenClient, IdentityError> {
    let basic = basic_credentials(headers);
    let client_id = form
        .client_id
        .clone()
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()))
        .ok_or_else(|| missing("client_id"))?;
    let secret = form
        .client_secret
        .clone()
        .or(basic.map(|(_, secret)| secret));
    let grant_type = form
        .grant_type
        .clone()
        .ok_or_else(|| missing("grant_type"))?;
    let multi = matches!(authority, "organizations" | "common" | "consumers");
    let tenant = if multi {
        if grant_type == "client_credentials" {
            return Err(IdentityError::new(
                "invalid_request",
                9001023,
                "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
            ));
        }
        None
    } else {
        Some(
            world.tenant_id(authority).ok_or_else(|| {
                failure_error(IdentityFailure::UnknownTenant, authority, &client_id)
            })?,
        )
    };
    if let Some(tenant) = &tenant {
        if let Some(failure) = world.failure_for(tenant, &client_id, None, |f| {
            matches!(
                f,
                IdentityFailure::UnknownTenant
                    | IdentityFailure::AppNotInTenant
                    | IdentityFailure::BadClientSecret
            )
        }) {
            return Err(failure_error(failure, authority, &client_id));
        }
    }
    let app = world
        .apps
        .get(&client_id)
        .cloned()
        .ok_or_else(|| failure_error(IdentityFailure::AppNotInTenant, authority, &client_id))?;
    if form.client_assertion.is_some() {
        return Err(IdentityError::new(
            "invalid_client",
            700027,
            "Client assertion failed signature validation. (The emulator accepts client secrets only.)",
        ));
    }
    let confidential = !app.secrets.is_empty();
    if confidential {
        check_client_secret(&app, &grant_type, secret, authority, &client_id)?;
    }
    Ok(TokenClient {
        client_id,
        tenant,
        confidential,
    })
}

/// A confidential client's secret. Client credentials and authorization codes need it; the
/// device code flow and its refresh tokens are public-client flows ("allow public client
/// flows"), where a secret is optional but checked when sent.
fn check_client_secret(
    app: &crate::world::AppRegistration,
    grant_type: &str,
    secret: Option<String>,
    authority: &str,
    client_id: &str,
) -> Result<(), IdentityError> {
    let required = matches!(grant_type, "client_credentials" | "authorization_code");
    if !required && secret.is_none() {
        return Ok(());
    }
    let now = clock::now();
    let given = secret.ok_or_else(|| IdentityError::new(
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ))?;
    let valid =
        app.secrets.iter().any(|s| s.text == given && s.end > now) && app.usable_from <= now;
    if valid {
        Ok(())
    } else {
        Err(failure_error(
            IdentityFailure::BadClientSecret,
            authority,
            client_id,
        ))
    }
}

/// `client_credentials`: an app-only token for `{resource}/.default`, never a refresh token.
fn grant_client_credentials(
    state: &AppState,
    world: &World,
    authority: &str,
    client: TokenClient,
    form: TokenForm,
) -> Result<Issued, IdentityError> {
    let TokenClient {
        client_id,
        tenant,
        confidential,
    } = client;
    let tenant = tenant.expect("client_credentials needs a tenant");
    let scope = form.scope.ok_or_else(|| missing("scope"))?;
    let resource_uri = scope
        .strip_suffix("/.default")
        .filter(|_| !scope.contains(' '))
        .ok_or_else(|| invalid_scope(&scope))?;
    let resource = Resource::from_uri_in(resource_uri, state.settings().cloud).ok_or_else(|| IdentityError::new(
        "invalid_resource",
        500011,
        format!("The resource principal named {resource_uri} was not found in the tenant named {authority}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
    ))?;
    if !confidential {
        return Err(IdentityError::new(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    if let Some(failure) = world.failure_for(&tenant, &client_id, None, |f| {
        f == IdentityFailure::ConsentRequired
    }) {
        return Err(failure_error(failure, authority, &client_id));
    }
    let grant = world.tenants[&tenant]
        .grants
        .get(&client_id)
        .cloned()
        .ok_or_else(|| failure_error(IdentityFailure::AppNotInTenant, authority, &client_id))?;
    let roles = grant.roles.get(&resource).cloned().unwrap_or_default();
    let lifetime = state.settings().access_token_lifetime_seconds;
    let access = access_token(
        state,
        &tenant,
        &client_id,
        resource,
        None,
        Some(&roles),
        None,
        lifetime,
    );
    // Exactly the documented success shape plus ext_expires_in, which Microsoft also
    // sends; never a refresh token.
    Ok(Issued {
        body: json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }),
    })
}

/// `refresh_token`: a new access token (and refresh token) for the user the grant was for.
fn grant_refresh_token(
    state: &AppState,
    world: &mut World,
    authority: &str,
    client: TokenClient,
    form: TokenForm,
) -> Result<Issued, IdentityError> {
    let TokenClient {
        client_id, tenant, ..
    } = client;
    let presented = form.refresh_token.ok_or_else(|| missing("refresh_token"))?;
    let grant = world
        .refresh_tokens
        .get(&presented)
        .cloned()
        .ok_or_else(|| {
            IdentityError::new(
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.",
            )
        })?;
    if grant.client_id != client_id {
        return Err(IdentityError::new(
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed. The refresh token was issued to a different client.",
        ));
    }
    if tenant.as_ref().is_some_and(|t| *t != grant.tenant) {
        return Err(IdentityError::new(
            "invalid_grant",
            50020,
            "User account from identity provider does not exist in tenant.",
        ));
    }
    if grant.expires <= clock::now() {
        return Err(failure_error(
            IdentityFailure::RefreshTokenExpired,
            authority,
            &client_id,
        ));
    }
    let scope = parse_delegated_scopes(
        state.settings().cloud,
        form.scope.as_deref().unwrap_or("offline_access"),
    )?;
    let scope = ScopeRequest {
        offline: true,
        ..scope
    };
    issue_delegated(
        state,
        world,
        &grant.tenant,
        &client_id,
        &grant.user_id,
        &scope,
        true,
    )
}

/// The device code grant (RFC 8628): pending, slow down, declined, redeemed, or the tokens.
fn grant_device_code(
    state: &AppState,
    world: &mut World,
    client: TokenClient,
    form: TokenForm,
) -> Result<Issued, IdentityError> {
    let client_id = client.client_id;
    let code = form.device_code.ok_or_else(|| missing("device_code"))?;
    let now = clock::now();
    let entry = world.device_codes.get_mut(&code).ok_or_else(|| {
        IdentityError::new(
            "bad_verification_code",
            70018,
            "Invalid verification code entered.",
        )
    })?;
    if entry.client_id != client_id {
        return Err(IdentityError::new(
            "bad_verification_code",
            70018,
            "Invalid verification code entered.",
        ));
    }
    if entry.expires <= now {
        return Err(IdentityError::new(
            "expired_token",
            70019,
            "Verification code expired.",
        ));
    }
    match entry.state.clone() {
        DeviceCodeState::Pending => {
            // RFC 8628 §3.5: polling faster than the interval gets slow_down, and the
            // interval grows by 5 seconds for this and all later requests.
            let too_fast = entry.last_poll.is_some_and(|last| {
                now - last < Duration::seconds(i64::try_from(entry.interval).unwrap_or(i64::MAX))
            });
            entry.last_poll = Some(now);
            if too_fast {
                entry.interval += 5;
                return Err(IdentityError::new(
                    "slow_down",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Poll less often.",
                ));
            }
            Err(IdentityError::new(
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            ))
        }
        DeviceCodeState::Declined => Err(IdentityError::new(
            "authorization_declined",
            70000,
            "The end user denied the authorization request.",
        )),
        DeviceCodeState::Redeemed => Err(IdentityError::new(
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed. The device code was already redeemed.",
        )),
        DeviceCodeState::Approved { tenant, user_id } => {
            entry.state = DeviceCodeState::Redeemed;
            let scope = parse_delegated_scopes(state.settings().cloud, &entry.scopes.join(" "))?;
            issue_delegated(state, world, &tenant, &client_id, &user_id, &scope, false)
        }
    }
}

/// `authorization_code`: once, before it expires, with the same redirect URI and (PKCE) the
/// verifier of its challenge.
fn grant_authorization_code(
    state: &AppState,
    world: &mut World,
    client: TokenClient,
    form: TokenForm,
) -> Result<Issued, IdentityError> {
    let TokenClient {
        client_id,
        confidential,
        ..
    } = client;
    let code = form.code.ok_or_else(|| missing("code"))?;
    let now = clock::now();
    let entry = world.auth_codes.get_mut(&code).ok_or_else(|| IdentityError::new(
        "invalid_grant",
        70008,
        "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
    ))?;
    if entry.redeemed {
        return Err(IdentityError::new("invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."));
    }
    if entry.expires <= now || entry.client_id != client_id {
        return Err(IdentityError::new("invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."));
    }
    if form.redirect_uri.as_deref() != Some(entry.redirect_uri.as_str()) {
        return Err(IdentityError::new("invalid_grant", 50011, "The redirect URI specified in the request does not match the redirect URI used to request the authorization code."));
    }
    if let Some((challenge, method)) = &entry.challenge {
        let verifier = form.code_verifier.ok_or_else(|| missing("code_verifier"))?;
        let computed = if method == "S256" {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()))
        } else {
            verifier
        };
        if &computed != challenge {
            return Err(IdentityError::new("invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request."));
        }
    } else if !confidential {
        return Err(missing("code_verifier"));
    }
    entry.redeemed = true;
    let (tenant, user_id, scopes) = (
        entry.tenant.clone(),
        entry.user_id.clone(),
        entry.scopes.join(" "),
    );
    let scope = parse_delegated_scopes(state.settings().cloud, &scopes)?;
    issue_delegated(state, world, &tenant, &client_id, &user_id, &scope, false)
}

#[derive(Debug, Deserialize)]
struct DeviceCodeForm {
    client_id: Option<String>,
    scope: Option<String>,
}

async fn device_code(
    State(state): State<AppState>,
    Path(authority): Path<String>,
    Form(form): Form<DeviceCodeForm>,
) -> Response {
    let result = (|| {
        let client_id = form.client_id.ok_or_else(|| missing("client_id"))?;
        let scope = form.scope.ok_or_else(|| missing("scope"))?;
        parse_delegated_scopes(state.settings().cloud, &scope)?;
        let mut world = state.world();
        let multi = matches!(authority.as_str(), "organizations" | "common");
        if !multi && world.tenant_id(&authority).is_none() {
            return Err(failure_error(
                IdentityFailure::UnknownTenant,
                &authority,
                &client_id,
            ));
        }
        if !world.apps.contains_key(&client_id) {
            return Err(failure_error(
                IdentityFailure::AppNotInTenant,
                &authority,
                &client_id,
            ));
        }
        let settings = state.settings();
        let user_code: String = random_secret(40)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .take(9)
            .collect();
        let device_code = random_secret(96);
        world.device_codes.insert(
            device_code.clone(),
            DeviceCode {
                device_code: device_code.clone(),
                user_code: user_code.clone(),
                authority: authority.clone(),
                client_id,
                scopes: scope.split_whitespace().map(str::to_string).collect(),
                expires: clock::now()
                    + Duration::seconds(
                        i64::try_from(settings.device_code_lifetime_seconds).unwrap_or(900),
                    ),
                interval: settings.device_code_interval_seconds,
                last_poll: None,
                state: DeviceCodeState::Pending,
            },
        );
        let verification_uri = format!("{}/devicelogin", state.base_url);
        Ok(json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": verification_uri,
            "expires_in": settings.device_code_lifetime_seconds,
            "interval": settings.device_code_interval_seconds,
            "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
        }))
    })();
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => error_response(&state, &error),
    }
}

async fn device_login_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "graph-emulator device login: there is no sign-in page. Approve a code with\n  POST /_emulator/devicecodes/{user_code}/approve {\"user\": \"<userPrincipalName>\"}\nor decline it with\n  POST /_emulator/devicecodes/{user_code}/decline\n",
    )
}

fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "invalid redirect_uri").into_response();
    };
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
    }
    // Microsoft answers with 302 Found.
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

/// An error page: Microsoft shows these in the browser instead of redirecting when the
/// redirect URI itself cannot be trusted.
fn error_page(state: &AppState, error: &IdentityError) -> Response {
    (error.status, Json(error.body(&state.base_url))).into_response()
}

async fn authorize(
    State(state): State<AppState>,
    Path(authority): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let get = |key: &str| query.get(key).cloned();
    let (Some(client_id), Some(redirect_uri)) = (get("client_id"), get("redirect_uri")) else {
        return error_page(&state, &missing("client_id and redirect_uri"));
    };
    let mut world = state.world();
    let Some(app) = world.apps.get(&client_id).cloned() else {
        return error_page(
            &state,
            &failure_error(IdentityFailure::AppNotInTenant, &authority, &client_id),
        );
    };
    if !app.redirect_uris.contains(&redirect_uri) {
        return error_page(&state, &IdentityError::new(
            "invalid_request",
            50011,
            format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."),
        ));
    }
    let state_param = get("state").unwrap_or_default();
    if get("response_type").as_deref() != Some("code") {
        return redirect_with(
            &redirect_uri,
            &[
                ("error", "unsupported_response_type"),
                (
                    "error_description",
                    "AADSTS70005: response_type 'token' is not enabled for the application.",
                ),
                ("state", &state_param),
            ],
        );
    }
    // No interactive sign-in here: `login_hint` names the user who signs in.
    let Some(hint) = get("login_hint") else {
        return redirect_with(&redirect_uri, &[("error", "login_required"), ("error_description", "AADSTS50058: A silent sign-in request was sent but no user is signed in. (graph-emulator: pass login_hint)"), ("state", &state_param)]);
    };
    let found = world
        .tenants
        .values()
        .find_map(|tenant| tenant.user_key(&hint).map(|user| (tenant.id.clone(), user)));
    let Some((tenant, user_id)) = found else {
        return redirect_with(
            &redirect_uri,
            &[
                ("error", "invalid_request"),
                (
                    "error_description",
                    "AADSTS50034: The user account does not exist in the directory.",
                ),
                ("state", &state_param),
            ],
        );
    };
    let multi = matches!(authority.as_str(), "organizations" | "common");
    if !multi && world.tenant_id(&authority).as_deref() != Some(tenant.as_str()) {
        return redirect_with(
            &redirect_uri,
            &[
                ("error", "invalid_request"),
                (
                    "error_description",
                    "AADSTS50020: User account from identity provider does not exist in tenant.",
                ),
                ("state", &state_param),
            ],
        );
    }
    let scopes: Vec<String> = get("scope")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let challenge = get("code_challenge").map(|c| {
        (
            c,
            get("code_challenge_method").unwrap_or_else(|| "plain".into()),
        )
    });
    let code = format!("0.{}", random_secret(96));
    world.auth_codes.insert(
        code.clone(),
        AuthCode {
            tenant,
            client_id,
            user_id,
            scopes,
            redirect_uri: redirect_uri.clone(),
            challenge,
            expires: clock::now() + Duration::minutes(10),
            redeemed: false,
        },
    );
    redirect_with(
        &redirect_uri,
        &[
            ("code", &code),
            ("state", &state_param),
            ("session_state", &guid()),
        ],
    )
}

/// `GET /{tenant}/v2.0/adminconsent` (and the v1 `/{tenant}/adminconsent`): the emulated admin
/// answers as the tenant's consent outcome says. Success grants what the app requests; both
/// answers carry `admin_consent=True`, as Microsoft's do (v2-admin-consent).
async fn admin_consent(
    State(state): State<AppState>,
    Path(authority): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let get = |key: &str| query.get(key).cloned().unwrap_or_default();
    let (client_id, redirect_uri, state_param) =
        (get("client_id"), get("redirect_uri"), get("state"));
    if authority == "common" {
        return error_page(&state, &IdentityError::new("invalid_request", 90009, "The v2.0 admin consent endpoint does not support /common. Use a tenant or /organizations."));
    }
    let mut world = state.world();
    let Some(app) = world.apps.get(&client_id).cloned() else {
        return error_page(
            &state,
            &failure_error(IdentityFailure::AppNotInTenant, &authority, &client_id),
        );
    };
    if !app.redirect_uris.contains(&redirect_uri) {
        return error_page(&state, &IdentityError::new("invalid_request", 50011, format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'.")));
    }
    let tenant_id = if authority == "organizations" {
        query
            .get("login_hint")
            .and_then(|hint| hint.split('@').nth(1))
            .and_then(|d| world.tenant_id(d))
    } else {
        world.tenant_id(&authority)
    };
    let Some(tenant_id) = tenant_id else {
        return error_page(
            &state,
            &failure_error(IdentityFailure::UnknownTenant, &authority, &client_id),
        );
    };
    let scope = get("scope");
    let tenant = world.tenants.get_mut(&tenant_id).expect("resolved above");
    if tenant.consent_outcome == crate::world::ConsentOutcome::Refuse {
        state.count("admin_consent_refused");
        return redirect_with(
            &redirect_uri,
            &[
                ("admin_consent", "True"),
                ("error", "consent_required"),
                (
                    "error_description",
                    "AADSTS65004: User declined to consent to access the app.",
                ),
                ("state", &state_param),
            ],
        );
    }
    let grant = tenant.grants.entry(client_id).or_default();
    for (resource, names) in &app.requested_roles {
        grant
            .roles
            .entry(*resource)
            .or_default()
            .extend(names.iter().cloned());
    }
    for (resource, names) in &app.requested_scopes {
        grant
            .scopes
            .entry(*resource)
            .or_default()
            .extend(names.iter().cloned());
    }
    state.count("admin_consent_granted");
    redirect_with(
        &redirect_uri,
        &[
            ("admin_consent", "True"),
            ("tenant", &tenant_id),
            ("scope", &scope),
            ("state", &state_param),
        ],
    )
}

/// Approves a pending device code as `user` (id or UPN in any tenant).
///
/// # Errors
/// A message for the control API when the code or user is unknown or the tenant does not match.
pub fn approve_device_code(world: &mut World, user_code: &str, user: &str) -> Result<(), String> {
    let found = world
        .tenants
        .values()
        .find_map(|tenant| tenant.user_key(user).map(|id| (tenant.id.clone(), id)));
    let (tenant, user_id) = found.ok_or_else(|| format!("no user `{user}`"))?;
    let authority_tenant = world
        .device_codes
        .values()
        .find(|code| code.user_code == user_code)
        .map(|code| code.authority.clone())
        .ok_or_else(|| format!("no device code `{user_code}`"))?;
    if !matches!(authority_tenant.as_str(), "organizations" | "common")
        && world.tenant_id(&authority_tenant).as_deref() != Some(tenant.as_str())
    {
        return Err(format!(
            "the code was requested for tenant `{authority_tenant}`, the user is in `{tenant}`"
        ));
    }
    let code = world
        .device_codes
        .values_mut()
        .find(|code| code.user_code == user_code)
        .expect("found above");
    if code.state != DeviceCodeState::Pending {
        return Err("the code is not pending".into());
    }
    code.state = DeviceCodeState::Approved { tenant, user_id };
    Ok(())
}

/// Declines a pending device code.
///
/// # Errors
/// A message when the code is unknown or not pending.
pub fn decline_device_code(world: &mut World, user_code: &str) -> Result<(), String> {
    let code = world
        .device_codes
        .values_mut()
        .find(|code| code.user_code == user_code)
        .ok_or_else(|| format!("no device code `{user_code}`"))?;
    if code.state != DeviceCodeState::Pending {
        return Err("the code is not pending".into());
    }
    code.state = DeviceCodeState::Declined;
    Ok(())
}
