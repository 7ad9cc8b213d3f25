//! The Teams Developer Portal subset tenantd uses to provision bots, under `{base}/devportal`:
//! app package import, bot registrations, and the custom-app upload policy.
//!
//! There is no public reference for this API; the shapes follow Microsoft's own client in Teams
//! Toolkit (`TeamsDevPortalClient`, fx-core) and the TeamsSimpleBotProvisioning sample: import
//! takes the package zip (`manifest.json`, `color.png` 192×192, `outline.png` 32×32) and answers
//! with an AppDefinition; `400` "App Id must be a GUID"; `409` when the app id is taken;
//! `POST /api/botframework` answers `409` when the bot exists; `GET
//! /api/usersettings/mtUserAppPolicy` reports `isSideloadingAllowed`. Tokens are delegated,
//! audience `https://dev.teams.microsoft.com`, scope `AppDefinitions.ReadWrite`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::graph::{authenticate, Caller, GraphError};
use crate::package::{png_size, read_zip};
use crate::world::{guid, Resource, Tenant};
use crate::{clock, AppState};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/devportal/api/appdefinitions/v2/import", post(import))
        .route("/devportal/api/appdefinitions", get(list_apps))
        .route(
            "/devportal/api/appdefinitions/{id}",
            get(read_app).delete(delete_app),
        )
        .route(
            "/devportal/api/botframework",
            get(list_bots).post(create_bot),
        )
        .route(
            "/devportal/api/botframework/{id}",
            get(read_bot).post(update_bot).delete(delete_bot),
        )
        .route("/devportal/api/usersettings/mtUserAppPolicy", get(policy))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
}

/// Which collection of the caller's tenant a route works on.
type Collection = fn(&mut Tenant) -> &mut BTreeMap<String, Value>;

fn app_definitions(tenant: &mut Tenant) -> &mut BTreeMap<String, Value> {
    &mut tenant.app_definitions
}

fn bots(tenant: &mut Tenant) -> &mut BTreeMap<String, Value> {
    &mut tenant.bots
}

/// Lists, reads or deletes (when `remove`) in a collection of the caller's tenant.
fn collection_call(
    state: &AppState,
    headers: &HeaderMap,
    collection: Collection,
    id: Option<&str>,
    remove: bool,
    not_found: fn() -> GraphError,
) -> Result<Response, GraphError> {
    let caller = portal_caller(state, headers)?;
    let mut world = state.world();
    let tenant = world
        .tenants
        .get_mut(&caller.tenant)
        .ok_or_else(|| bad("unknown tenant"))?;
    let items = collection(tenant);
    match (id, remove) {
        (None, _) => Ok(Json(items.values().cloned().collect::<Vec<_>>()).into_response()),
        (Some(id), false) => {
            Ok(Json(items.get(id).cloned().ok_or_else(not_found)?).into_response())
        }
        (Some(id), true) => {
            items.remove(id).ok_or_else(not_found)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

fn portal_caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, GraphError> {
    let caller = authenticate(
        state,
        headers.get(header::AUTHORIZATION),
        Resource::DevPortal,
    )?;
    if caller.is_app_only() || !caller.permissions.contains("AppDefinitions.ReadWrite") {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The token needs the delegated scope AppDefinitions.ReadWrite.",
        ));
    }
    Ok(caller)
}

fn bad(message: &str) -> GraphError {
    GraphError::bad_request("BadRequest", message)
}

fn is_guid(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

/// The newest GA manifest schema the portal takes (microsoft/json-schemas
/// `teams/v1.30/MicrosoftTeams.schema.json`); 1.18 was never published.
const LATEST_MANIFEST_MINOR: u32 = 30;

/// Validates a package by the rules of Microsoft's published manifest schema (required
/// properties, lengths, patterns, enums; microsoft/json-schemas teams/v1.30) and its icon
/// rules (color 192×192; outline 32×32 with transparency), and returns its manifest.
fn validate_package(bytes: &[u8]) -> Result<Value, GraphError> {
    let files = read_zip(bytes).map_err(|e| bad(&e.to_string()))?;
    let manifest: Value = files
        .get("manifest.json")
        .and_then(|m| serde_json::from_slice(m).ok())
        .ok_or_else(|| bad("The app package must contain a valid manifest.json at its root."))?;
    if !is_guid(&manifest["id"]) {
        return Err(bad("App Id must be a GUID"));
    }
    for key in [
        "manifestVersion",
        "version",
        "developer",
        "name",
        "description",
        "icons",
        "accentColor",
    ] {
        if manifest.get(key).is_none() {
            return Err(bad(&format!("manifest.json: '{key}' is required.")));
        }
    }
    let version = manifest["manifestVersion"].as_str().unwrap_or_default();
    let published = version == "devPreview"
        || version
            .strip_prefix("1.")
            .and_then(|minor| minor.parse::<u32>().ok())
            .is_some_and(|minor| minor <= LATEST_MANIFEST_MINOR && minor != 18);
    if !published {
        return Err(bad(
            "manifest.json: 'manifestVersion' is not a published schema version.",
        ));
    }
    let semver = manifest["version"].as_str().is_some_and(|v| {
        let parts: Vec<&str> = v.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p.len() == 1 || !p.starts_with('0'))
            })
    });
    if !semver {
        return Err(bad("manifest.json: 'version' must be MAJOR.MINOR.PATCH."));
    }
    // (pointer, required, longest)
    for (pointer, required, longest) in [
        ("/name/short", true, 30),
        ("/name/full", false, 100),
        ("/description/short", true, 80),
        ("/description/full", true, 4000),
        ("/developer/name", true, 32),
        ("/developer/websiteUrl", true, 2048),
        ("/developer/privacyUrl", true, 2048),
        ("/developer/termsOfUseUrl", true, 2048),
    ] {
        let name = pointer.trim_start_matches('/').replace('/', ".");
        match manifest.pointer(pointer) {
            None if !required => {}
            None => return Err(bad(&format!("manifest.json: '{name}' is required."))),
            Some(Value::String(text)) if text.chars().count() <= longest => {
                let url = pointer.ends_with("Url");
                let lower = text.to_ascii_lowercase();
                if url && !(lower.starts_with("https://") || lower.starts_with("http://")) {
                    return Err(bad(&format!(
                        "manifest.json: '{name}' must be an http(s) URL."
                    )));
                }
            }
            Some(_) => {
                return Err(bad(&format!(
                    "manifest.json: '{name}' must be a string of at most {longest} characters."
                )))
            }
        }
    }
    let accent = manifest["accentColor"].as_str().unwrap_or_default();
    if !(accent.len() == 7
        && accent.starts_with('#')
        && accent[1..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad("manifest.json: 'accentColor' must be a #rrggbb color."));
    }
    for (key, size) in [("color", 192), ("outline", 32)] {
        let file = manifest["icons"][key]
            .as_str()
            .ok_or_else(|| bad(&format!("manifest.json: 'icons.{key}' is required.")))?;
        let image = files.get(file).ok_or_else(|| {
            bad(&format!(
                "The icon '{file}' named in icons.{key} is missing from the package."
            ))
        })?;
        if png_size(image) != Some((size, size)) {
            return Err(bad(&format!("The {key} icon must be a {size}x{size} PNG.")));
        }
        // IHDR color type 4 (gray + alpha) or 6 (RGBA): the outline must be transparent.
        if key == "outline" && !matches!(image.get(25), Some(4 | 6)) {
            return Err(bad("The outline icon must be a transparent PNG."));
        }
    }
    let bots = manifest["bots"].as_array().cloned().unwrap_or_default();
    if bots.len() > 1 {
        return Err(bad("manifest.json: 'bots' may hold one bot at most."));
    }
    for bot in &bots {
        if !is_guid(&bot["botId"]) {
            return Err(bad("Each bots[].botId must be a GUID."));
        }
        let scopes = bot["scopes"].as_array().cloned().unwrap_or_default();
        let known = scopes.iter().all(|scope| {
            matches!(
                scope.as_str(),
                Some("team" | "personal" | "groupChat" | "copilot")
            )
        });
        if scopes.is_empty() || scopes.len() > 4 || !known {
            return Err(bad(
                "bots[].scopes must name 1 to 4 of team, personal, groupChat and copilot.",
            ));
        }
    }
    Ok(manifest)
}

async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Result<Response, GraphError> {
    let caller = portal_caller(&state, &headers)?;
    let manifest = validate_package(&body)?;
    let app_id = manifest["id"].as_str().unwrap_or_default().to_string();
    let overwrite = query
        .get("overwriteIfAppAlreadyExists")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut world = state.world();
    let taken_elsewhere = world.tenants.values().any(|t| {
        t.id != caller.tenant
            && t.app_definitions
                .values()
                .any(|a| a["appId"] == json!(app_id))
    });
    if taken_elsewhere {
        return Err(GraphError::new(
            StatusCode::CONFLICT,
            "Conflict",
            "An app with this id already exists in another tenant.",
        ));
    }
    let tenant = world
        .tenants
        .get_mut(&caller.tenant)
        .ok_or_else(|| bad("unknown tenant"))?;
    let existing = tenant
        .app_definitions
        .iter()
        .find(|(_, a)| a["appId"] == json!(app_id))
        .map(|(k, _)| k.clone());
    if existing.is_some() && !overwrite {
        return Err(GraphError::new(
            StatusCode::CONFLICT,
            "Conflict",
            "App already exists. Import with overwriteIfAppAlreadyExists=true to replace it.",
        ));
    }
    let teams_app_id = existing.unwrap_or_else(guid);
    let now = clock::graph(clock::now());
    let definition = json!({
        "teamsAppId": teams_app_id,
        "appId": app_id,
        "tenantId": caller.tenant,
        "appName": manifest["name"]["short"],
        "shortName": manifest["name"]["short"],
        "longName": manifest["name"]["full"],
        "shortDescription": manifest["description"]["short"],
        "longDescription": manifest["description"]["full"],
        "version": manifest["version"],
        "manifestVersion": manifest["manifestVersion"],
        "developerName": manifest["developer"]["name"],
        "colorIcon": manifest["icons"]["color"],
        "outlineIcon": manifest["icons"]["outline"],
        "bots": manifest["bots"].as_array().cloned().unwrap_or_default(),
        "userList": [{"userObjectId": caller.user_id, "tenantId": caller.tenant, "isAdministrator": true}],
        "createdAt": now,
        "updatedAt": now,
    });
    tenant
        .app_definitions
        .insert(teams_app_id, definition.clone());
    Ok(Json(definition).into_response())
}

async fn list_apps(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    collection_call(
        &state,
        &headers,
        app_definitions,
        None,
        false,
        app_not_found,
    )
}

fn app_not_found() -> GraphError {
    GraphError::not_found("NotFound", "App definition not found.")
}

async fn read_app(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GraphError> {
    collection_call(
        &state,
        &headers,
        app_definitions,
        Some(&id),
        false,
        app_not_found,
    )
}

async fn delete_app(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GraphError> {
    collection_call(
        &state,
        &headers,
        app_definitions,
        Some(&id),
        true,
        app_not_found,
    )
}

fn validate_bot(body: &[u8]) -> Result<Value, GraphError> {
    let bot: Value = serde_json::from_slice(body)
        .map_err(|_| bad("The body must be a bot registration in JSON."))?;
    if !is_guid(&bot["botId"]) {
        return Err(bad("botId must be a GUID."));
    }
    if !bot["name"].is_string() {
        return Err(bad("name is required."));
    }
    let endpoint = bot["messagingEndpoint"].as_str().unwrap_or_default();
    if !endpoint.starts_with("https://") {
        return Err(bad("messagingEndpoint must be an https URL."));
    }
    Ok(bot)
}

async fn create_bot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let caller = portal_caller(&state, &headers)?;
    let mut bot = validate_bot(&body)?;
    let id = bot["botId"].as_str().unwrap_or_default().to_string();
    let mut world = state.world();
    if world.tenants.values().any(|t| t.bots.contains_key(&id)) {
        return Err(GraphError::new(
            StatusCode::CONFLICT,
            "Conflict",
            "A bot with this botId already exists.",
        ));
    }
    if bot.get("configuredChannels").is_none() {
        bot["configuredChannels"] = json!(["msteams"]);
    }
    bot["tenantId"] = json!(caller.tenant);
    world
        .tenants
        .get_mut(&caller.tenant)
        .ok_or_else(|| bad("unknown tenant"))?
        .bots
        .insert(id, bot.clone());
    Ok((StatusCode::CREATED, Json(bot)).into_response())
}

async fn list_bots(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    collection_call(&state, &headers, bots, None, false, bot_not_found)
}

fn bot_not_found() -> GraphError {
    GraphError::not_found("NotFound", "Bot not found.")
}

async fn read_bot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GraphError> {
    collection_call(&state, &headers, bots, Some(&id), false, bot_not_found)
}

async fn update_bot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, GraphError> {
    let caller = portal_caller(&state, &headers)?;
    let mut bot = validate_bot(&body)?;
    if bot["botId"] != json!(id) {
        return Err(bad("botId in the body must match the path."));
    }
    let mut world = state.world();
    let bots = &mut world
        .tenants
        .get_mut(&caller.tenant)
        .ok_or_else(|| bad("unknown tenant"))?
        .bots;
    if !bots.contains_key(&id) {
        return Err(bot_not_found());
    }
    bot["tenantId"] = json!(caller.tenant);
    bots.insert(id, bot.clone());
    Ok(Json(bot).into_response())
}

async fn delete_bot(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, GraphError> {
    collection_call(&state, &headers, bots, Some(&id), true, bot_not_found)
}

async fn policy(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, GraphError> {
    let caller = portal_caller(&state, &headers)?;
    let world = state.world();
    let allowed = world
        .tenants
        .get(&caller.tenant)
        .is_some_and(|t| t.sideloading_allowed);
    Ok(Json(json!({"value": {"isSideloadingAllowed": allowed}})).into_response())
}
