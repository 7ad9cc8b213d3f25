//! Application registrations: create, upsert by `uniqueName`, read, list, delete, `addPassword`,
//! `removePassword`.
//! A secret added here authenticates against the emulated identity platform (after the
//! configured replication delay, as new credentials take seconds to work at Microsoft).
//!
//! Sources: https://learn.microsoft.com/graph/api/application-post-applications,
//! .../application-upsert (`Prefer: create-if-missing`: 201 and the object when new, 204 when
//! it exists, 404 without the header),
//! .../application-addpassword (`secretText` returned once; default end two years after start;
//! published sample 16), .../application-removepassword.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use time::Duration;

use super::{
    context, created, json_object, no_content, page, tenant_of, Caller, GraphError, GraphResult,
    Workload,
};
use crate::world::{guid, random_secret, AppRegistration, ClientSecret, World};
use crate::{clock, AppState};

const READ: [&str; 5] = [
    "Application.Read.All",
    "Application.ReadWrite.All",
    "Application.ReadWrite.OwnedBy",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const WRITE: [&str; 2] = ["Application.ReadWrite.All", "Application.ReadWrite.OwnedBy"];
const AUDIENCES: [&str; 4] = [
    "AzureADMyOrg",
    "AzureADMultipleOrgs",
    "AzureADandPersonalMicrosoftAccount",
    "PersonalMicrosoftAccount",
];

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/applications", get(list).post(create))
        .route("/v1.0/applications/{id}", get(read).delete(remove))
        .route(
            "/v1.0/applications/byAppId/{app_id}",
            get(read_by_app_id).delete(remove_by_app_id),
        )
        .route("/v1.0/applications/{id}/addPassword", post(add_password))
        .route(
            "/v1.0/applications/byAppId/{app_id}/addPassword",
            post(add_password_by_app_id),
        )
        .route(
            "/v1.0/applications/{id}/removePassword",
            post(remove_password),
        )
        .route(
            // `applications(uniqueName='…')`, as `canonical_path` rewrites it.
            "/v1.0/applications/byUniqueName/{unique_name}",
            get(read_by_unique_name).patch(upsert),
        )
}

fn not_found(id: &str) -> GraphError {
    GraphError::directory_not_found(id)
}

fn object_id(world: &mut World, caller: &Caller, app_id: &str) -> Result<String, GraphError> {
    let tenant = tenant_of(world, caller)?;
    tenant
        .applications
        .iter()
        .find(|(_, app)| app["appId"] == json!(app_id))
        .map(|(id, _)| id.clone())
        .ok_or_else(|| not_found(app_id))
}

async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let input = json_object(&body)?;
    let out = insert_app(&state, &caller, &input, None)?;
    Ok(created(out))
}

/// `PATCH /applications(uniqueName='…')` (application-upsert.md): with
/// `Prefer: create-if-missing`, creates the application (201 and the object) when no
/// application has the unique name; updates it (204) when one has; without the header a
/// missing one is a 404.
async fn upsert(
    State(state): State<AppState>,
    caller: Caller,
    Path(unique_name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let input = json_object(&body)?;
    let existing = unique_object_id(&mut state.world(), &caller, &unique_name)?;
    if let Some(id) = existing {
        let mut world = state.world();
        let tenant = tenant_of(&mut world, &caller)?;
        let app = tenant
            .applications
            .get_mut(&id)
            .ok_or_else(|| not_found(&id))?;
        for (key, value) in input {
            if !matches!(
                key.as_str(),
                "id" | "appId" | "uniqueName" | "passwordCredentials"
            ) {
                app[key.as_str()] = value;
            }
        }
        return Ok(no_content());
    }
    let create = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("create-if-missing"))
        });
    if !create {
        return Err(not_found(&unique_name));
    }
    let out = insert_app(&state, &caller, &input, Some(&unique_name))?;
    Ok(created(out))
}

async fn read_by_unique_name(
    State(state): State<AppState>,
    caller: Caller,
    Path(unique_name): Path<String>,
) -> GraphResult {
    caller.require(Workload::Directory, &READ)?;
    let id = unique_object_id(&mut state.world(), &caller, &unique_name)?
        .ok_or_else(|| not_found(&unique_name))?;
    read_object(&state, &caller, &id)
}

fn unique_object_id(
    world: &mut World,
    caller: &Caller,
    unique_name: &str,
) -> Result<Option<String>, GraphError> {
    let tenant = tenant_of(world, caller)?;
    Ok(tenant
        .applications
        .iter()
        .find(|(_, app)| app["uniqueName"] == json!(unique_name))
        .map(|(id, _)| id.clone()))
}

/// Registers a new application from `input` (with `unique_name` when upserted); returns it
/// as Graph answers it.
fn insert_app(
    state: &AppState,
    caller: &Caller,
    input: &serde_json::Map<String, Value>,
    unique_name: Option<&str>,
) -> Result<Value, GraphError> {
    let display_name = input
        .get("displayName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            GraphError::bad_request(
                "Request_BadRequest",
                "Invalid value specified for property 'displayName' of resource 'Application'.",
            )
        })?;
    let audience = input
        .get("signInAudience")
        .and_then(Value::as_str)
        .unwrap_or("AzureADMyOrg");
    if !AUDIENCES.contains(&audience) {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "Invalid value specified for property 'signInAudience' of resource 'Application'.",
        ));
    }
    let now = clock::now();
    let mut world = state.world();
    let tenant = tenant_of(&mut world, caller)?;
    let (id, app_id) = (guid(), guid());
    let redirect_uris = input
        .get("web")
        .and_then(|w| w.get("redirectUris"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    let app = json!({
        "id": id,
        "appId": app_id,
        "displayName": display_name,
        "signInAudience": audience,
        "createdDateTime": clock::graph(now),
        "deletedDateTime": null,
        "publisherDomain": tenant.domains[0],
        "identifierUris": input.get("identifierUris").cloned().unwrap_or_else(|| json!([])),
        "passwordCredentials": [],
        "keyCredentials": [],
        "requiredResourceAccess": input.get("requiredResourceAccess").cloned().unwrap_or_else(|| json!([])),
        "web": {"redirectUris": redirect_uris, "homePageUrl": null, "logoutUrl": null},
        "uniqueName": unique_name,
    });
    tenant.applications.insert(id, app.clone());
    let home = tenant.id.clone();
    let uris: Vec<String> = redirect_uris
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect();
    world.apps.insert(
        app_id.clone(),
        AppRegistration {
            client_id: app_id,
            display_name: display_name.to_string(),
            home_tenant: home,
            secrets: Vec::new(),
            redirect_uris: uris,
            requested_roles: BTreeMap::new(),
            requested_scopes: BTreeMap::new(),
            usable_from: now,
        },
    );
    let mut out = app;
    out["@odata.context"] = json!(context(state, "applications/$entity"));
    Ok(out)
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(Workload::Directory, &READ)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let items: Vec<Value> = tenant.applications.values().cloned().collect();
    page(&state, &uri, "applications", items, &query, 100)
}

fn read_object(state: &AppState, caller: &Caller, id: &str) -> GraphResult {
    caller.require(Workload::Directory, &READ)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, caller)?;
    let mut app = tenant
        .applications
        .get(id)
        .cloned()
        .ok_or_else(|| not_found(id))?;
    app["@odata.context"] = json!(context(state, "applications/$entity"));
    Ok(Json(app).into_response())
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> GraphResult {
    read_object(&state, &caller, &id)
}

async fn read_by_app_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
) -> GraphResult {
    let id = object_id(&mut state.world(), &caller, &app_id)?;
    read_object(&state, &caller, &id)
}

fn remove_object(state: &AppState, caller: &Caller, id: &str) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, caller)?;
    let app = tenant
        .applications
        .remove(id)
        .ok_or_else(|| not_found(id))?;
    if let Some(app_id) = app["appId"].as_str() {
        world.apps.remove(app_id);
    }
    Ok(no_content())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> GraphResult {
    remove_object(&state, &caller, &id)
}

async fn remove_by_app_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
) -> GraphResult {
    let id = object_id(&mut state.world(), &caller, &app_id)?;
    remove_object(&state, &caller, &id)
}

fn add_password_object(state: &AppState, caller: &Caller, id: &str, body: &[u8]) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let input = if body.is_empty() {
        serde_json::Map::new()
    } else {
        json_object(body)?
    };
    let credential = input
        .get("passwordCredential")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let now = clock::now();
    let start = credential
        .get("startDateTime")
        .and_then(Value::as_str)
        .and_then(clock::parse)
        .unwrap_or(now);
    let end = credential
        .get("endDateTime")
        .and_then(Value::as_str)
        .and_then(clock::parse)
        .unwrap_or(start + Duration::days(730));
    let secret = random_secret(40);
    let key_id = guid();
    let delay = state.settings().secret_replication_delay_seconds;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, caller)?;
    let app = tenant
        .applications
        .get_mut(id)
        .ok_or_else(|| not_found(id))?;
    let display_name = credential
        .get("displayName")
        .cloned()
        .unwrap_or(Value::Null);
    let hint: String = secret.chars().take(3).collect();
    let stored = json!({
        "customKeyIdentifier": null,
        "displayName": display_name,
        "endDateTime": clock::graph(end),
        "hint": hint,
        "keyId": key_id,
        "secretText": null,
        "startDateTime": clock::graph(start),
    });
    app["passwordCredentials"]
        .as_array_mut()
        .expect("array")
        .push(stored);
    let app_id = app["appId"].as_str().unwrap_or_default().to_string();
    if let Some(registration) = world.apps.get_mut(&app_id) {
        registration.secrets.push(ClientSecret {
            key_id: key_id.clone(),
            text: secret.clone(),
            end,
        });
        registration.usable_from = now + Duration::seconds(i64::try_from(delay).unwrap_or(0));
    }
    // The published addPassword response (sample 16): the only time secretText is returned.
    Ok(Json(json!({
        "@odata.context": context(state, "microsoft.graph.passwordCredential"),
        "customKeyIdentifier": null,
        "endDateTime": clock::graph(end),
        "keyId": key_id,
        "startDateTime": clock::graph(start),
        "secretText": secret,
        "hint": hint,
        "displayName": display_name,
    }))
    .into_response())
}

async fn add_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> GraphResult {
    add_password_object(&state, &caller, &id, &body)
}

async fn add_password_by_app_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(app_id): Path<String>,
    body: Bytes,
) -> GraphResult {
    let id = object_id(&mut state.world(), &caller, &app_id)?;
    add_password_object(&state, &caller, &id, &body)
}

async fn remove_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let input = json_object(&body)?;
    let key_id = input
        .get("keyId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let app = tenant
        .applications
        .get_mut(&id)
        .ok_or_else(|| not_found(&id))?;
    let credentials = app["passwordCredentials"].as_array_mut().expect("array");
    let before = credentials.len();
    credentials.retain(|c| c["keyId"] != json!(key_id));
    if credentials.len() == before {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            format!("No password credential found with keyId {key_id}."),
        ));
    }
    let app_id = app["appId"].as_str().unwrap_or_default().to_string();
    if let Some(registration) = world.apps.get_mut(&app_id) {
        registration.secrets.retain(|s| s.key_id != key_id);
    }
    Ok(no_content())
}
