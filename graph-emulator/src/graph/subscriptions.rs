//! Change-notification subscriptions: create (with the validation handshake), read, list,
//! renew, delete, reauthorize.
//!
//! Sources: https://learn.microsoft.com/graph/api/subscription-post-subscriptions (handshake
//! against `notificationUrl` and `lifecycleNotificationUrl`; `400` when it fails),
//! https://learn.microsoft.com/graph/api/resources/subscription (maximum lifetime per
//! resource; values under 45 minutes are raised to 45; Teams resources need a
//! `lifecycleNotificationUrl` beyond one hour; `clientState` at most 128 characters),
//! .../subscription-update (PATCH renews; `lifecycleNotificationUrl` cannot be added by PATCH),
//! .../subscription-delete (`204`), .../subscription-reauthorize (`204`), and the quota table in
//! change-notifications-supported-resources (users: 100 per app and tenant; `403`).
//!
//! Invariants: a subscription exists only after both handshakes passed; an expired subscription
//! is gone (`404`), as Graph deletes subscriptions that are not renewed in time.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use time::{Duration, OffsetDateTime};

use super::{
    context, created, json_object, no_content, resolve_user, Caller, GraphError, GraphResult,
    Workload,
};
use crate::notifications::{self, HandshakeError};
use crate::world::{guid, Subscription, Tenant, Watched, World};
use crate::{clock, AppState};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/subscriptions", get(list).post(create))
        .route(
            "/v1.0/subscriptions/{id}",
            get(read).patch(renew).delete(remove),
        )
        .route("/v1.0/subscriptions/{id}/reauthorize", post(reauthorize))
}

fn invalid(message: impl Into<String>) -> GraphError {
    GraphError::bad_request("InvalidRequest", message)
}

fn not_found() -> GraphError {
    GraphError::not_found("ResourceNotFound", "The object was not found.")
}

/// Parses a subscription resource into what it watches, with the permissions that allow it.
fn parse_resource(
    tenant: &Tenant,
    caller: &Caller,
    resource: &str,
) -> Result<(Watched, &'static [&'static str]), GraphError> {
    let canonical = super::canonical_path(&format!("/v1.0/{}", resource.trim_start_matches('/')));
    let path = canonical
        .trim_start_matches("/v1.0/")
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let unsupported = || {
        invalid(format!(
            "Resource '{resource}' is not supported for change notifications."
        ))
    };
    let user = |segment: &str| resolve_user(tenant, caller, segment, Workload::Outlook);
    const MAIL: &[&str] = &[
        "Mail.Read",
        "Mail.ReadWrite",
        "Mail.ReadBasic",
        "Mail.ReadBasic.All",
    ];
    const CALENDAR: &[&str] = &["Calendars.Read", "Calendars.ReadWrite"];
    const FILES: &[&str] = &[
        "Files.ReadWrite",
        "Files.ReadWrite.All",
        "Sites.ReadWrite.All",
    ];
    const USERS: &[&str] = &[
        "User.Read.All",
        "User.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    ];
    const CHATS: &[&str] = &[
        "Chat.Read",
        "Chat.ReadWrite",
        "Chat.Read.All",
        "ChatMessage.Read",
        "ChatMessage.Read.All",
        "Chat.ReadWrite.All",
    ];
    match lower.as_slice() {
        ["users"] => Ok((Watched::Users, USERS)),
        ["users", _, "messages"] => Ok((
            Watched::Messages {
                user_id: user(segments[1])?,
                folder_id: None,
            },
            MAIL,
        )),
        ["users", _, "mailfolders", _, "messages"] => {
            let user_id = user(segments[1])?;
            let mailbox = tenant.users[&user_id]
                .mailbox
                .as_ref()
                .ok_or_else(super::mailbox_not_enabled)?;
            let folder = mailbox.folder(segments[3]).ok_or_else(|| {
                GraphError::not_found(
                    "ErrorItemNotFound",
                    "The specified folder could not be found in the store.",
                )
            })?;
            Ok((
                Watched::Messages {
                    user_id,
                    folder_id: Some(folder.id.clone()),
                },
                MAIL,
            ))
        }
        ["users", _, "events"] | ["users", _, "calendar", "events"] => Ok((
            Watched::Events {
                user_id: user(segments[1])?,
            },
            CALENDAR,
        )),
        ["users", _, "drive", "root"] => Ok((
            Watched::DriveRoot {
                user_id: user(segments[1])?,
            },
            FILES,
        )),
        ["chats", "getallmessages"] => Ok((
            Watched::ChatMessages { chat_id: None },
            &["Chat.Read.All", "ChatMessage.Read.All"],
        )),
        ["chats", _, "messages"] => {
            let chat_id = segments[1].to_string();
            if !tenant.chats.contains_key(&chat_id) {
                return Err(GraphError::not_found(
                    "NotFound",
                    format!("Chat '{chat_id}' was not found."),
                ));
            }
            Ok((
                Watched::ChatMessages {
                    chat_id: Some(chat_id),
                },
                CHATS,
            ))
        }
        _ => Err(unsupported()),
    }
}

fn check_url(key: &str, value: &str, allow_http: bool) -> Result<(), GraphError> {
    let url = url::Url::parse(value)
        .map_err(|_| invalid(format!("Invalid {key}: '{value}' is not an absolute URL.")))?;
    let loopback = matches!(
        url.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_http => Ok(()),
        _ => Err(invalid(format!(
            "The {key} must make use of the HTTPS protocol."
        ))),
    }
}

/// The expiry Graph accepts for `requested`: raised to 45 minutes, refused beyond the maximum.
fn checked_expiration(
    requested: &str,
    watched: &Watched,
    rich: bool,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, GraphError> {
    let at = clock::parse(requested)
        .ok_or_else(|| invalid(format!("Invalid expirationDateTime '{requested}'.")))?;
    if at <= now {
        return Err(invalid("Subscription expiration must be in the future."));
    }
    let max = watched.max_minutes(rich);
    if at > now + Duration::minutes(max) {
        return Err(invalid(format!(
            "Subscription expiration can only be {max} minutes in the future."
        )));
    }
    Ok(at.max(now + Duration::minutes(45)))
}

fn handshake_error(error: &HandshakeError) -> GraphError {
    invalid(error.to_string())
}

/// A subscription of the caller's app in the caller's tenant, purging it when expired.
fn own<'w>(
    world: &'w mut World,
    caller: &Caller,
    id: &str,
) -> Result<&'w mut Subscription, GraphError> {
    let now = clock::now();
    if world
        .subscriptions
        .get(id)
        .is_some_and(|s| s.expiration <= now)
    {
        world.subscriptions.remove(id);
    }
    match world.subscriptions.get_mut(id) {
        Some(s) if s.tenant == caller.tenant && s.application_id == caller.client_id => Ok(s),
        _ => Err(not_found()),
    }
}

/// A subscription POST, checked as Graph checks it before it looks at the resource.
struct CreateRequest {
    input: Map<String, Value>,
    change_types: Vec<String>,
    notification_url: String,
    lifecycle_url: Option<String>,
    resource: String,
    expiration: String,
    client_state: Option<String>,
    rich: bool,
}

impl CreateRequest {
    fn parse(body: &Bytes) -> Result<Self, GraphError> {
        let input = json_object(body)?;
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(change_type), Some(notification_url), Some(resource), Some(expiration)) = (
            text("changeType"),
            text("notificationUrl"),
            text("resource"),
            text("expirationDateTime"),
        ) else {
            return Err(invalid(
                "changeType, notificationUrl, resource and expirationDateTime are required.",
            ));
        };
        let change_types: Vec<String> = change_type
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        if change_types
            .iter()
            .any(|c| !matches!(c.as_str(), "created" | "updated" | "deleted"))
        {
            return Err(invalid(format!(
                "Invalid changeType '{change_type}'. Allowed values: created, updated, deleted."
            )));
        }
        let lifecycle_url = text("lifecycleNotificationUrl");
        let client_state = text("clientState");
        if client_state
            .as_ref()
            .is_some_and(|c| c.chars().count() > 128)
        {
            return Err(invalid("clientState must be at most 128 characters."));
        }
        let rich = input
            .get("includeResourceData")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if rich
            && (text("encryptionCertificate").is_none()
                || text("encryptionCertificateId").is_none())
        {
            return Err(invalid("encryptionCertificate and encryptionCertificateId are required when includeResourceData is true."));
        }
        if rich
            && text("encryptionCertificate")
                .and_then(|c| crate::rich::Certificate::parse(&c))
                .is_none()
        {
            return Err(invalid("The encryptionCertificate is not a base64-encoded X.509 certificate with an RSA key of 2048 to 4096 bits."));
        }
        if rich && text("encryptionCertificateId").is_some_and(|id| id.chars().count() > 128) {
            return Err(invalid(
                "encryptionCertificateId must be at most 128 characters.",
            ));
        }
        Ok(Self {
            change_types,
            notification_url,
            lifecycle_url,
            resource,
            expiration,
            client_state,
            rich,
            input,
        })
    }
}

/// What the caller may watch, checked under the world lock: the resource exists and the caller
/// holds its permissions, rich notifications fit it, the mailbox is ready, the expiration is
/// within the resource's maximum, and Graph's per-app limits hold (100 user subscriptions, one
/// per chat).
fn admit(
    state: &AppState,
    caller: &Caller,
    request: &CreateRequest,
    now: OffsetDateTime,
) -> Result<(Watched, OffsetDateTime), GraphError> {
    let mut world = state.world();
    let tenant = super::tenant_of(&mut world, caller)?;
    // Mailboxes whose provisioning time has come exist before their folders are looked up.
    for user in tenant.users.values_mut() {
        user.services_ready(now);
    }
    let (watched, permissions) = parse_resource(tenant, caller, &request.resource)?;
    if request.rich {
        // Rich notifications exist for Outlook and Teams messages here; Outlook needs
        // `$select` (the supported-resources table of the rich-notifications doc).
        match &watched {
            Watched::ChatMessages { .. } => {}
            Watched::Messages { .. } | Watched::Events { .. } => {
                if !request.resource.contains("$select=") {
                    return Err(invalid("Resource data for Outlook resources requires $select, e.g. users/{id}/messages?$select=subject,from."));
                }
            }
            _ => {
                return Err(invalid(format!(
                    "includeResourceData is not supported for the resource '{}'.",
                    request.resource
                )))
            }
        }
    }
    let workload = if watched.is_teams() {
        Workload::Teams
    } else {
        Workload::Directory
    };
    caller.require(workload, permissions)?;
    if let Watched::Messages { user_id, .. }
    | Watched::Events { user_id }
    | Watched::DriveRoot { user_id } = &watched
    {
        if !tenant
            .users
            .get_mut(user_id)
            .expect("resolved")
            .services_ready(now)
        {
            return Err(super::mailbox_not_enabled());
        }
    }
    let expiration = checked_expiration(&request.expiration, &watched, request.rich, now)?;
    if watched.is_teams()
        && expiration > now + Duration::hours(1)
        && request.lifecycle_url.is_none()
    {
        return Err(invalid("lifecycleNotificationUrl is required for subscription creation on this resource when the expirationDateTime value exceeds 1 hour."));
    }
    let live = |s: &&Subscription| s.tenant == caller.tenant && s.expiration > now;
    if watched == Watched::Users {
        let count = world
            .subscriptions
            .values()
            .filter(live)
            .filter(|s| s.watched == Watched::Users && s.application_id == caller.client_id)
            .count();
        if count >= 100 {
            return Err(GraphError::new(StatusCode::FORBIDDEN, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: The number of subscriptions for users has reached the limit of 100 per app and tenant.]"));
        }
    }
    if let Watched::ChatMessages { chat_id: Some(_) } = &watched {
        if let Some(existing) = world
            .subscriptions
            .values()
            .filter(live)
            .find(|s| s.watched == watched && s.application_id == caller.client_id)
        {
            return Err(GraphError::new(
                StatusCode::CONFLICT,
                "ExtensionError",
                format!(
                    "Subscription Id {} already exists for the requested combination",
                    existing.id
                ),
            ));
        }
    }
    Ok((watched, expiration))
}

async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> GraphResult {
    let request = CreateRequest::parse(&body)?;
    let settings = state.settings();
    check_url(
        "notificationUrl",
        &request.notification_url,
        settings.allow_http_notification_urls,
    )?;
    if let Some(url) = &request.lifecycle_url {
        check_url(
            "lifecycleNotificationUrl",
            url,
            settings.allow_http_notification_urls,
        )?;
    }
    let now = clock::now();
    let (watched, expiration) = admit(&state, &caller, &request, now)?;
    let CreateRequest {
        input,
        change_types,
        notification_url,
        lifecycle_url,
        resource,
        client_state,
        rich,
        ..
    } = request;
    // The handshakes run without the world lock: the endpoint may take up to 10 seconds.
    notifications::handshake(&state, &notification_url)
        .await
        .map_err(|e| handshake_error(&e))?;
    if let Some(url) = &lifecycle_url {
        notifications::handshake(&state, url)
            .await
            .map_err(|e| handshake_error(&e))?;
    }
    let mut echo = Map::new();
    for key in [
        "latestSupportedTlsVersion",
        "encryptionCertificate",
        "encryptionCertificateId",
        "notificationUrlAppId",
    ] {
        if let Some(value) = input.get(key) {
            echo.insert(key.into(), value.clone());
        }
    }
    let subscription = Subscription {
        id: guid(),
        tenant: caller.tenant.clone(),
        application_id: caller.client_id.clone(),
        creator_id: caller.user_id.clone().unwrap_or_else(|| {
            crate::world::service_principal_id(&caller.tenant, &caller.client_id)
        }),
        resource,
        watched,
        change_types,
        notification_url,
        lifecycle_url,
        client_state,
        expiration,
        include_resource_data: rich,
        echo,
    };
    let mut out = subscription.render();
    out["@odata.context"] = json!(context(&state, "subscriptions/$entity"));
    state
        .world()
        .subscriptions
        .insert(subscription.id.clone(), subscription);
    state.count("subscriptions_created");
    Ok(created(out))
}

async fn list(State(state): State<AppState>, caller: Caller) -> GraphResult {
    let now = clock::now();
    let mut world = state.world();
    world.subscriptions.retain(|_, s| s.expiration > now);
    let value: Vec<Value> = world
        .subscriptions
        .values()
        .filter(|s| s.tenant == caller.tenant && s.application_id == caller.client_id)
        .map(Subscription::render)
        .collect();
    Ok(
        Json(json!({"@odata.context": context(&state, "subscriptions"), "value": value}))
            .into_response(),
    )
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> GraphResult {
    let mut world = state.world();
    let mut out = own(&mut world, &caller, &id)?.render();
    out["@odata.context"] = json!(context(&state, "subscriptions/$entity"));
    Ok(Json(out).into_response())
}

async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> GraphResult {
    let input = json_object(&body)?;
    if input.contains_key("lifecycleNotificationUrl") {
        return Err(invalid("lifecycleNotificationUrl cannot be added or changed by an update; delete the subscription and create a new one."));
    }
    let expiration = input
        .get("expirationDateTime")
        .and_then(Value::as_str)
        .map(str::to_string);
    let notification_url = input
        .get("notificationUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    if expiration.is_none() && notification_url.is_none() {
        return Err(invalid("Subscription must contain either the 'expirationDateTime' or 'notificationUrl' property and its value."));
    }
    let settings = state.settings();
    let new_expiration = {
        let mut world = state.world();
        let subscription = own(&mut world, &caller, &id)?;
        match &expiration {
            Some(value) => Some(checked_expiration(
                value,
                &subscription.watched,
                subscription.include_resource_data,
                clock::now(),
            )?),
            None => None,
        }
    };
    if let Some(url) = &notification_url {
        check_url(
            "notificationUrl",
            url,
            settings.allow_http_notification_urls,
        )?;
        notifications::handshake(&state, url)
            .await
            .map_err(|e| handshake_error(&e))?;
    }
    let mut world = state.world();
    let subscription = own(&mut world, &caller, &id)?;
    if let Some(at) = new_expiration {
        subscription.expiration = at;
    }
    if let Some(url) = notification_url {
        subscription.notification_url = url;
    }
    state.count("subscriptions_renewed");
    // The renew response as published (sample 12) plus the fields Graph adds.
    Ok(Json(subscription.render()).into_response())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> GraphResult {
    let mut world = state.world();
    own(&mut world, &caller, &id)?;
    world.subscriptions.remove(&id);
    Ok(no_content())
}

async fn reauthorize(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> GraphResult {
    let mut world = state.world();
    own(&mut world, &caller, &id)?;
    state.count("subscriptions_reauthorized");
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations_are_raised_to_45_minutes_and_capped_per_resource() {
        let now = clock::parse("2026-01-01T00:00:00Z").unwrap();
        let users = Watched::Users;
        let soon = checked_expiration("2026-01-01T00:10:00Z", &users, false, now).unwrap();
        assert_eq!(soon, now + Duration::minutes(45));
        assert!(checked_expiration("2025-12-31T00:00:00Z", &users, false, now).is_err());
        let chat = Watched::ChatMessages { chat_id: None };
        assert!(checked_expiration("2026-01-04T00:00:00Z", &chat, false, now).is_ok());
        assert!(checked_expiration("2026-01-04T00:01:00Z", &chat, false, now).is_err());
        let mail = Watched::Messages {
            user_id: "u".into(),
            folder_id: None,
        };
        assert!(checked_expiration("2026-01-07T23:59:00Z", &mail, false, now).is_ok());
        assert!(checked_expiration("2026-01-07T23:59:00Z", &mail, true, now).is_err());
    }

    #[test]
    fn notification_urls_need_https_except_on_loopback() {
        assert!(check_url("notificationUrl", "https://hooks.example.com/x", false).is_ok());
        assert!(check_url("notificationUrl", "http://127.0.0.1:8080/x", false).is_ok());
        assert!(check_url("notificationUrl", "http://hooks.example.com/x", false).is_err());
        assert!(check_url("notificationUrl", "http://hooks.example.com/x", true).is_ok());
        assert!(check_url("notificationUrl", "not a url", true).is_err());
    }
}
