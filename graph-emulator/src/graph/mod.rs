//! Microsoft Graph v1.0: authentication of callers, permission checks, Graph's error body and
//! the OData helpers (`$select`, `$top`, `@odata.nextLink`) the resource modules share.
//!
//! Error shape (https://learn.microsoft.com/graph/errors): `{"error": {"code", "message",
//! "innerError": {"date", "request-id", "client-request-id"}}}` with a `request-id` header.

pub mod applications;
pub mod batch;
pub mod calendar;
pub mod drive;
pub mod mail;
pub mod subscriptions;
pub mod teams;
pub mod users;

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::world::{Resource, Tenant, World};
use crate::{clock, AppState};

/// Routes of Graph v1.0.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(users::router())
        .merge(mail::router())
        .merge(calendar::router())
        .merge(drive::router())
        .merge(teams::router())
        .merge(applications::router())
        .merge(subscriptions::router())
        .merge(batch::router())
}

/// A Graph error response.
#[derive(Debug, Clone)]
pub struct GraphError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.code`.
    pub code: String,
    /// `error.message`.
    pub message: String,
}

impl GraphError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 with a code.
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Directory object not found.
    pub fn directory_not_found(id: &str) -> Self {
        Self::not_found(
            "Request_ResourceNotFound",
            format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        )
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let request_id = crate::world::guid();
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": clock::graph_inner(clock::now()),
                    "request-id": request_id,
                    "client-request-id": request_id,
                }
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("request-id", value);
        }
        response
    }
}

/// The result of a Graph handler.
pub type GraphResult = Result<Response, GraphError>;

/// Which Graph workload answers, which decides the words of a 403.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Entra ID objects: users, licenses, applications, subscriptions.
    Directory,
    /// Exchange: mail and calendar.
    Outlook,
    /// OneDrive and SharePoint.
    Files,
    /// Teams.
    Teams,
}

impl Workload {
    fn forbidden(self) -> GraphError {
        match self {
            Workload::Directory => GraphError::new(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            Workload::Outlook => GraphError::new(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            Workload::Files => GraphError::new(
                StatusCode::FORBIDDEN,
                "accessDenied",
                "Either scp or roles claim need to be present in the token.",
            ),
            Workload::Teams => GraphError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Missing role permissions on the request. API requires one of the listed permissions.",
            ),
        }
    }
}

/// Who is calling, from a verified bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant (`tid`).
    pub tenant: String,
    /// Client id (`appid`).
    pub client_id: String,
    /// Signed-in user (`oid`) for delegated tokens.
    pub user_id: Option<String>,
    /// `roles` (app-only) or `scp` (delegated).
    pub permissions: BTreeSet<String>,
}

impl Caller {
    /// App-only (client credentials).
    pub fn is_app_only(&self) -> bool {
        self.user_id.is_none()
    }

    /// Passes when the token carries any of `permissions` (app role or delegated scope).
    ///
    /// # Errors
    /// The workload's 403.
    pub fn require(&self, workload: Workload, permissions: &[&str]) -> Result<(), GraphError> {
        if permissions.iter().any(|p| self.permissions.contains(*p)) {
            Ok(())
        } else {
            Err(workload.forbidden())
        }
    }

    /// The actor as Graph records it in `createdBy` and similar identity sets.
    pub fn identity_set(&self, world: &World) -> Value {
        let app_name = world
            .apps
            .get(&self.client_id)
            .map(|app| app.display_name.clone())
            .unwrap_or_default();
        match &self.user_id {
            Some(user_id) => {
                let user = world
                    .tenants
                    .get(&self.tenant)
                    .and_then(|t| t.users.get(user_id));
                json!({
                    "application": {"id": self.client_id, "displayName": app_name},
                    "user": {
                        "id": user_id,
                        "displayName": user.map(crate::world::User::display_name),
                        "email": user.map(crate::world::User::address),
                    }
                })
            }
            None => json!({"application": {"id": self.client_id, "displayName": app_name}}),
        }
    }
}

fn unauthorized(message: &str) -> GraphError {
    GraphError::new(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    )
}

/// Verifies a bearer token for `resource` and returns the caller.
///
/// # Errors
/// 401 `InvalidAuthenticationToken` as Graph words it.
pub fn authenticate(
    state: &AppState,
    authorization: Option<&HeaderValue>,
    resource: Resource,
) -> Result<Caller, GraphError> {
    let token = authorization
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
        .ok_or_else(|| unauthorized("Access token is empty."))?;
    let claims = state.signer.verify(token).ok_or_else(|| {
        unauthorized(
            "IDX14100: JWT is not well formed, there are no dots (.) or the signature is invalid.",
        )
    })?;
    if claims.get("aud").and_then(Value::as_str) != Some(resource.uri_in(state.settings().cloud)) {
        return Err(unauthorized("Invalid audience."));
    }
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp <= clock::unix(clock::now()) {
        return Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_string);
    let tenant = text("tid").unwrap_or_default();
    let client_id = text("appid").unwrap_or_default();
    let delegated = text("idtyp").as_deref() == Some("user");
    let permissions: BTreeSet<String> = if delegated {
        text("scp")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        claims
            .get("roles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let world = state.world();
    let Some(tenant_ref) = world.tenants.get(&tenant) else {
        return Err(unauthorized("The tenant for tenant guid does not exist."));
    };
    let user_id = if delegated {
        let oid = text("oid").unwrap_or_default();
        if !tenant_ref.users.contains_key(&oid) {
            return Err(unauthorized("The user or the application was not found."));
        }
        Some(oid)
    } else {
        None
    };
    Ok(Caller {
        tenant,
        client_id,
        user_id,
        permissions,
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = GraphError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, GraphError> {
        authenticate(
            state,
            parts.headers.get(header::AUTHORIZATION),
            Resource::Graph,
        )
    }
}

/// Resolves the `{user}` segment (`me`, an id or a userPrincipalName) to a user id.
///
/// # Errors
/// 400 for `me` with an app-only token; the workload's 404 for an unknown user.
pub fn resolve_user(
    tenant: &Tenant,
    caller: &Caller,
    segment: &str,
    workload: Workload,
) -> Result<String, GraphError> {
    if segment.eq_ignore_ascii_case("me") {
        return caller.user_id.clone().ok_or_else(|| {
            GraphError::bad_request(
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )
        });
    }
    tenant.user_key(segment).ok_or_else(|| match workload {
        Workload::Outlook => GraphError::not_found(
            "ErrorInvalidUser",
            format!("The requested user '{segment}' is invalid."),
        ),
        _ => GraphError::directory_not_found(segment),
    })
}

/// The caller's tenant.
pub fn tenant_of<'w>(world: &'w mut World, caller: &Caller) -> Result<&'w mut Tenant, GraphError> {
    world
        .tenants
        .get_mut(&caller.tenant)
        .ok_or_else(|| unauthorized("The tenant for tenant guid does not exist."))
}

/// 404 for mailboxes that are not provisioned yet.
pub fn mailbox_not_enabled() -> GraphError {
    GraphError::not_found(
        "MailboxNotEnabledForRESTAPI",
        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
    )
}

/// `@odata.context` for a path relative to the metadata document.
pub fn context(state: &AppState, fragment: &str) -> String {
    format!("{}/v1.0/$metadata#{fragment}", state.base_url)
}

/// Keeps only `$select`ed properties (plus `id` and OData annotations), as Graph does.
pub fn select(item: &Value, query: &BTreeMap<String, String>) -> Value {
    let Some(select) = query.get("$select") else {
        return item.clone();
    };
    let wanted: BTreeSet<String> = select
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let Value::Object(map) = item else {
        return item.clone();
    };
    let kept: Map<String, Value> = map
        .iter()
        .filter(|(key, _)| {
            key.starts_with('@') || *key == "id" || wanted.contains(&key.to_ascii_lowercase())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

/// A page of a collection: `$top` (default `default_top`, at most 999) and `$skiptoken`
/// paging with `@odata.nextLink`, as Graph pages.
///
/// # Errors
/// 400 for a malformed `$top`.
pub fn page(
    state: &AppState,
    uri: &Uri,
    context_fragment: &str,
    items: Vec<Value>,
    query: &BTreeMap<String, String>,
    default_top: usize,
) -> GraphResult {
    let top = match query.get("$top") {
        Some(top) => top
            .parse::<usize>()
            .ok()
            .filter(|top| (1..=999).contains(top))
            .ok_or_else(|| {
                GraphError::bad_request(
                    "Request_UnsupportedQuery",
                    format!("Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive."),
                )
            })?,
        None => default_top,
    };
    let skip = query
        .get("$skiptoken")
        .and_then(|token| token.strip_prefix("X'"))
        .and_then(|token| token.strip_suffix('\''))
        .and_then(|token| token.parse::<usize>().ok())
        .unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|item| select(&item, query))
        .collect();
    let mut body = json!({"@odata.context": context(state, context_fragment), "value": value});
    if skip + top < total {
        let mut params: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.push(("$skiptoken".into(), format!("X'{}'", skip + top)));
        let encoded = serde_urlencoded::to_string(&params).unwrap_or_default();
        body["@odata.nextLink"] = json!(format!("{}{}?{encoded}", state.base_url, uri.path()));
    }
    Ok(Json(body).into_response())
}

/// `201 Created` with a JSON body.
pub fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `204 No Content`.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON body from a request, with Graph's error for malformed JSON.
///
/// # Errors
/// 400 `BadRequest` when the body is not a JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(GraphError::bad_request(
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )),
    }
}

/// Answers paths Graph does not know.
pub async fn unknown_segment(uri: Uri) -> Response {
    let segment = uri
        .path()
        .trim_start_matches("/v1.0")
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    GraphError::bad_request(
        "BadRequest",
        format!("Resource not found for the segment '{segment}'."),
    )
    .into_response()
}

/// Rewrites OData key syntax into path segments so routes stay plain:
/// `/v1.0/me/...` → `/v1.0/users/me/...`, `mailFolders('Inbox')` → `mailFolders/Inbox`,
/// `applications(appId='x')` → `applications/byAppId/x`.
pub fn canonical_path(path: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for segment in path.split('/') {
        // Clients send OData keys raw (`('x')`) or with the quotes escaped (`%27`).
        let decoded = segment.replace("%27", "'");
        if let Some(open) = decoded.find('(') {
            if decoded.ends_with(')') {
                let name = &decoded[..open];
                let inner = &decoded[open + 1..decoded.len() - 1];
                if let Some((key, value)) = inner.split_once('=') {
                    segments.push(name.to_string());
                    segments.push(format!("by{}{}", key[..1].to_ascii_uppercase(), &key[1..]));
                    segments.push(value.trim_matches('\'').to_string());
                } else {
                    segments.push(name.to_string());
                    segments.push(inner.trim_matches('\'').to_string());
                }
                continue;
            }
        }
        segments.push(segment.to_string());
    }
    let mut joined = segments.join("/");
    if joined == "/v1.0/me" || joined.starts_with("/v1.0/me/") {
        joined = joined.replacen("/v1.0/me", "/v1.0/users/me", 1);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_keys_become_segments() {
        assert_eq!(
            canonical_path("/v1.0/me/mailFolders('Inbox')/messages"),
            "/v1.0/users/me/mailFolders/Inbox/messages"
        );
        assert_eq!(
            canonical_path("/v1.0/applications(appId='abc')/addPassword"),
            "/v1.0/applications/byAppId/abc/addPassword"
        );
        assert_eq!(canonical_path("/v1.0/users/x"), "/v1.0/users/x");
        assert_eq!(canonical_path("/v1.0/meetings"), "/v1.0/meetings");
    }
}
