//! The control API under `/_emulator`: seed tenants, apps and users; flip consent, user state
//! and identity failures; approve or decline device codes; trigger lifecycle notifications;
//! change token lifetimes, budgets and faults; read the request log, deliveries and counters.
//! It is for tests and operators, never part of what Microsoft serves.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::Duration;

use crate::throttle::{Budgets, Faults};
use crate::world::{
    AppSeed, ConsentOutcome, FailureRule, SeedError, SkuSeed, TenantSeed, UserSeed,
};
use crate::{clock, identity, notifications, AppState, Settings, Shared};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_emulator", get(index))
        .route("/_emulator/", get(index))
        .route("/_emulator/tenants", get(list_tenants).post(create_tenant))
        .route("/_emulator/tenants/{tenant}/apps", post(create_app))
        .route(
            "/_emulator/tenants/{tenant}/apps/{client_id}/grant",
            delete(revoke_grant),
        )
        .route("/_emulator/tenants/{tenant}/users", post(create_user))
        .route(
            "/_emulator/tenants/{tenant}/users/{user}",
            axum::routing::patch(update_user),
        )
        .route("/_emulator/tenants/{tenant}/consent", put(set_consent))
        .route(
            "/_emulator/tenants/{tenant}/sideloading",
            put(set_sideloading),
        )
        .route(
            "/_emulator/failures",
            get(list_failures).post(add_failure).delete(clear_failures),
        )
        .route("/_emulator/devicecodes/{code}/approve", post(approve))
        .route("/_emulator/devicecodes/{code}/decline", post(decline))
        .route("/_emulator/subscriptions", get(list_subscriptions))
        .route(
            "/_emulator/subscriptions/{id}/lifecycle",
            post(trigger_lifecycle),
        )
        .route("/_emulator/settings", get(get_settings).put(put_settings))
        .route("/_emulator/budgets", get(get_budgets).put(put_budgets))
        .route("/_emulator/faults", get(get_faults).put(put_faults))
        .route("/_emulator/requests", get(requests).delete(clear_requests))
        .route("/_emulator/deliveries", get(deliveries))
        .route("/_emulator/counters", get(counters))
        .route("/_emulator/demo", post(demo))
}

/// What the control API offers, for whoever opens its address (the demo's banner names it).
const INDEX: &[(&str, &str, &str)] = &[
    (
        "GET, POST",
        "/_emulator/tenants",
        "tenants with users and grants; seed one",
    ),
    (
        "POST",
        "/_emulator/tenants/{tenant}/apps",
        "seed an app registration",
    ),
    (
        "DELETE",
        "/_emulator/tenants/{tenant}/apps/{clientId}/grant",
        "revoke the tenant's consent",
    ),
    ("POST", "/_emulator/tenants/{tenant}/users", "seed a user"),
    (
        "PATCH",
        "/_emulator/tenants/{tenant}/users/{user}",
        "set user properties",
    ),
    (
        "PUT",
        "/_emulator/tenants/{tenant}/consent",
        "the admin consent page's outcome",
    ),
    (
        "PUT",
        "/_emulator/tenants/{tenant}/sideloading",
        "custom app upload on or off",
    ),
    (
        "GET, POST, DELETE",
        "/_emulator/failures",
        "seeded token failures (AADSTS codes)",
    ),
    (
        "POST",
        "/_emulator/devicecodes/{userCode}/approve",
        "approve a device code sign-in",
    ),
    (
        "POST",
        "/_emulator/devicecodes/{userCode}/decline",
        "decline a device code sign-in",
    ),
    (
        "GET",
        "/_emulator/subscriptions",
        "every change-notification subscription",
    ),
    (
        "POST",
        "/_emulator/subscriptions/{id}/lifecycle",
        "send a lifecycle notification",
    ),
    (
        "GET, PUT",
        "/_emulator/settings",
        "token lifetimes, delays, timeouts, retries",
    ),
    (
        "GET, PUT",
        "/_emulator/budgets",
        "throttling budgets (fixed window or token bucket)",
    ),
    (
        "GET, PUT",
        "/_emulator/faults",
        "injected errors, latency and drops",
    ),
    ("GET, DELETE", "/_emulator/requests", "the request log"),
    (
        "GET",
        "/_emulator/deliveries",
        "notification deliveries and their outcome",
    ),
    (
        "GET",
        "/_emulator/counters",
        "counters: tokens, throttled, faults, notifications",
    ),
    ("POST", "/_emulator/demo", "seed the demo tenant"),
];

async fn index() -> Json<Value> {
    Json(json!({
        "graph": "/v1.0",
        "identity": "/{tenant}/oauth2/v2.0/token, /authorize, /devicecode, /adminconsent",
        "developerPortal": "/devportal/api",
        "control": INDEX
            .iter()
            .map(|(methods, path, what)| json!({"methods": methods, "path": path, "what": what}))
            .collect::<Vec<_>>(),
    }))
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The tenant a path names (id or domain), or why there is none.
fn tenant_of<'w>(
    world: &'w mut crate::world::World,
    tenant: &str,
) -> Result<&'w mut crate::world::Tenant, String> {
    let id = world
        .tenant_id(tenant)
        .ok_or_else(|| format!("unknown tenant `{tenant}`"))?;
    Ok(world.tenants.get_mut(&id).expect("resolved"))
}

fn seed_problem(error: &SeedError) -> Response {
    let status = match error {
        SeedError::UnknownTenant(_) => StatusCode::NOT_FOUND,
        SeedError::Exists(_) => StatusCode::CONFLICT,
        SeedError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    problem(status, error.to_string())
}

fn provisioning_delay(state: &Shared) -> Duration {
    Duration::seconds(i64::try_from(state.settings().provisioning_delay_seconds).unwrap_or(0))
}

async fn create_tenant(State(state): State<AppState>, Json(seed): Json<TenantSeed>) -> Response {
    let domain = seed.domain.clone();
    match state.world().seed_tenant(seed) {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({"id": id, "domain": domain})),
        )
            .into_response(),
        Err(error) => seed_problem(&error),
    }
}

async fn list_tenants(State(state): State<AppState>) -> Response {
    let world = state.world();
    let tenants: Vec<Value> = world
        .tenants
        .values()
        .map(|t| {
            json!({
                "id": t.id,
                "domains": t.domains,
                "users": t.users.values().map(|u| json!({"id": u.id, "userPrincipalName": u.upn})).collect::<Vec<_>>(),
                "grants": t.grants,
                "consentOutcome": t.consent_outcome,
            })
        })
        .collect();
    Json(tenants).into_response()
}

async fn create_app(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Json(seed): Json<AppSeed>,
) -> Response {
    match state.world().seed_app(&tenant, seed, clock::now()) {
        Ok((client_id, secret)) => (
            StatusCode::CREATED,
            Json(json!({"clientId": client_id, "clientSecret": secret})),
        )
            .into_response(),
        Err(error) => seed_problem(&error),
    }
}

async fn revoke_grant(
    State(state): State<AppState>,
    Path((tenant, client_id)): Path<(String, String)>,
) -> Response {
    let mut world = state.world();
    let tenant = match tenant_of(&mut world, &tenant) {
        Ok(tenant) => tenant,
        Err(message) => return problem(StatusCode::NOT_FOUND, message),
    };
    match tenant.grants.remove(&client_id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => problem(StatusCode::NOT_FOUND, "the app has no grant in this tenant"),
    }
}

async fn create_user(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Json(seed): Json<UserSeed>,
) -> Response {
    let upn = seed.user_principal_name.clone();
    let delay = provisioning_delay(&state);
    match state.world().seed_user(&tenant, seed, clock::now(), delay) {
        Ok(id) => (
            StatusCode::CREATED,
            Json(json!({"id": id, "userPrincipalName": upn})),
        )
            .into_response(),
        Err(error) => seed_problem(&error),
    }
}

async fn update_user(
    State(state): State<AppState>,
    Path((tenant, user)): Path<(String, String)>,
    Json(changes): Json<serde_json::Map<String, Value>>,
) -> Response {
    let mut world = state.world();
    let tenant = match tenant_of(&mut world, &tenant) {
        Ok(tenant) => tenant,
        Err(message) => return problem(StatusCode::NOT_FOUND, message),
    };
    let Some(key) = tenant.user_key(&user) else {
        return problem(StatusCode::NOT_FOUND, format!("unknown user `{user}`"));
    };
    let user = tenant.users.get_mut(&key).expect("resolved");
    for (k, v) in changes {
        user.properties.insert(k, v);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
    outcome: ConsentOutcome,
}

async fn set_consent(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Json(body): Json<ConsentBody>,
) -> Response {
    let mut world = state.world();
    let tenant = match tenant_of(&mut world, &tenant) {
        Ok(tenant) => tenant,
        Err(message) => return problem(StatusCode::NOT_FOUND, message),
    };
    tenant.consent_outcome = body.outcome;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SideloadingBody {
    allowed: bool,
}

async fn set_sideloading(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Json(body): Json<SideloadingBody>,
) -> Response {
    let mut world = state.world();
    let tenant = match tenant_of(&mut world, &tenant) {
        Ok(tenant) => tenant,
        Err(message) => return problem(StatusCode::NOT_FOUND, message),
    };
    tenant.sideloading_allowed = body.allowed;
    StatusCode::NO_CONTENT.into_response()
}

async fn list_failures(State(state): State<AppState>) -> Response {
    Json(state.world().failures.clone()).into_response()
}

async fn add_failure(State(state): State<AppState>, Json(rule): Json<FailureRule>) -> Response {
    state.world().failures.push(rule);
    StatusCode::CREATED.into_response()
}

async fn clear_failures(State(state): State<AppState>) -> Response {
    state.world().failures.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    user: String,
}

async fn approve(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Json(body): Json<ApproveBody>,
) -> Response {
    match identity::approve_device_code(&mut state.world(), &code, &body.user) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => problem(StatusCode::BAD_REQUEST, message),
    }
}

async fn decline(State(state): State<AppState>, Path(code): Path<String>) -> Response {
    match identity::decline_device_code(&mut state.world(), &code) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(message) => problem(StatusCode::BAD_REQUEST, message),
    }
}

async fn list_subscriptions(State(state): State<AppState>) -> Response {
    let world = state.world();
    let all: Vec<Value> = world
        .subscriptions
        .values()
        .map(|s| {
            let mut rendered = s.render();
            rendered["tenantId"] = json!(s.tenant);
            rendered
        })
        .collect();
    Json(all).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleBody {
    event: String,
}

async fn trigger_lifecycle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<LifecycleBody>,
) -> Response {
    if !matches!(
        body.event.as_str(),
        "reauthorizationRequired" | "subscriptionRemoved" | "missed"
    ) {
        return problem(
            StatusCode::BAD_REQUEST,
            "event must be reauthorizationRequired, subscriptionRemoved or missed",
        );
    }
    let mut world = state.world();
    let Some(subscription) = world.subscriptions.get(&id).cloned() else {
        return problem(StatusCode::NOT_FOUND, format!("no subscription `{id}`"));
    };
    if !notifications::lifecycle(&state, &subscription, &body.event) {
        return problem(
            StatusCode::CONFLICT,
            "the subscription has no lifecycleNotificationUrl",
        );
    }
    if body.event == "subscriptionRemoved" {
        world.subscriptions.remove(&id);
    }
    StatusCode::ACCEPTED.into_response()
}

async fn get_settings(State(state): State<AppState>) -> Response {
    Json(state.settings()).into_response()
}

async fn put_settings(State(state): State<AppState>, Json(settings): Json<Settings>) -> Response {
    state.set_settings(settings);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_budgets(State(state): State<AppState>) -> Response {
    Json(state.throttle.budgets()).into_response()
}

async fn put_budgets(State(state): State<AppState>, Json(budgets): Json<Budgets>) -> Response {
    state.throttle.set_budgets(budgets);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(state): State<AppState>) -> Response {
    Json(state.throttle.faults()).into_response()
}

async fn put_faults(State(state): State<AppState>, Json(faults): Json<Faults>) -> Response {
    let shares_ok =
        (0.0..=1.0).contains(&faults.error_rate) && (0.0..=1.0).contains(&faults.drop_rate);
    if !shares_ok
        || faults
            .error_statuses
            .iter()
            .any(|s| !(100..=599).contains(s))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "errorRate and dropRate are shares between 0 and 1; errorStatuses are HTTP statuses",
        );
    }
    state.throttle.set_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn requests(State(state): State<AppState>) -> Response {
    Json(state.throttle.requests()).into_response()
}

async fn clear_requests(State(state): State<AppState>) -> Response {
    state.throttle.clear_requests();
    StatusCode::NO_CONTENT.into_response()
}

async fn deliveries(State(state): State<AppState>) -> Response {
    Json(state.notifier.records()).into_response()
}

async fn counters(State(state): State<AppState>) -> Response {
    Json(state.counters()).into_response()
}

/// The demo tenant: what a client needs to connect to it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoTenant {
    /// Tenant id.
    pub tenant_id: String,
    /// Default domain.
    pub domain: String,
    /// The daemon app's client id (app-only, admin-consented).
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// The demo users' UPNs.
    pub users: Vec<String>,
}

/// The id of the demo tenant, fixed so demo databases survive restarts.
pub const DEMO_TENANT_ID: &str = "6b0a4d1e-5c3f-4a8e-9d2b-7e1f0c9a8b3d";
/// The client id of the demo app.
pub const DEMO_CLIENT_ID: &str = "9f3c2b1a-8e7d-4c6b-a5f4-3e2d1c0b9a87";

/// Application permissions the demo app holds: everything tenantd uses app-only.
pub const DEMO_APP_PERMISSIONS: [&str; 9] = [
    "User.ReadWrite.All",
    "Organization.Read.All",
    "Mail.ReadWrite",
    "Mail.Send",
    "Calendars.ReadWrite",
    "Files.ReadWrite.All",
    "Chat.Create",
    "Chat.Read.All",
    "Application.ReadWrite.All",
];

/// Delegated permissions the demo app holds (`Application.ReadWrite.All` and the Developer
/// Portal's for bot provisioning).
pub const DEMO_DELEGATED_PERMISSIONS: [&str; 9] = [
    "User.Read",
    "Application.ReadWrite.All",
    "Mail.ReadWrite",
    "Mail.Send",
    "Calendars.ReadWrite",
    "ChatMessage.Send",
    "Chat.ReadWrite",
    "Files.ReadWrite",
    "https://dev.teams.microsoft.com/AppDefinitions.ReadWrite",
];

/// Seeds a demo tenant (`contoso-demo.onmicrosoft.com`) with an admin-consented app and three
/// licensed users. The secret is random per emulator start.
///
/// # Errors
/// [`SeedError`] when a demo tenant exists already.
pub fn seed_demo(state: &Shared) -> Result<DemoTenant, SeedError> {
    let domain = "contoso-demo.onmicrosoft.com".to_string();
    let now = clock::now();
    let delay = provisioning_delay(state);
    let mut world = state.world();
    let tenant_id = world.seed_tenant(TenantSeed {
        id: Some(DEMO_TENANT_ID.into()),
        domain: domain.clone(),
        display_name: Some("Contoso (demo)".into()),
        skus: Some(vec![SkuSeed {
            sku_part_number: "ENTERPRISEPACK".into(),
            seats: 25,
            includes_mailbox: true,
        }]),
    })?;
    let (client_id, secret) = world.seed_app(
        &tenant_id,
        AppSeed {
            client_id: Some(DEMO_CLIENT_ID.into()),
            client_secret: None,
            public_client: false,
            display_name: Some("tenantd demo".into()),
            redirect_uris: vec![
                "http://127.0.0.1:8080/oauth/callback".into(),
                "http://127.0.0.1:8080/oauth/consent-callback".into(),
            ],
            application_permissions: DEMO_APP_PERMISSIONS
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
            delegated_permissions: DEMO_DELEGATED_PERMISSIONS
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
            admin_consented: true,
        },
        now,
    )?;
    let mut users = Vec::new();
    for (alias, name) in [
        ("adele", "Adele Vance"),
        ("alex", "Alex Wilber"),
        ("megan", "Megan Bowen"),
    ] {
        let upn = format!("{alias}@{domain}");
        world.seed_user(
            &tenant_id,
            UserSeed {
                user_principal_name: upn.clone(),
                display_name: Some(name.into()),
                usage_location: Some("US".into()),
                license: Some("ENTERPRISEPACK".into()),
            },
            now,
            delay,
        )?;
        users.push(upn);
    }
    Ok(DemoTenant {
        tenant_id,
        domain,
        client_id,
        client_secret: secret.unwrap_or_default(),
        users,
    })
}

async fn demo(State(state): State<AppState>) -> Response {
    match seed_demo(&state) {
        Ok(demo) => (StatusCode::CREATED, Json(demo)).into_response(),
        Err(error) => seed_problem(&error),
    }
}
