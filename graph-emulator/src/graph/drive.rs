//! OneDrive: simple upload by path, upload sessions with ranged PUTs, reading and deleting
//! items, and `createdBy` attribution.
//!
//! Sources: https://learn.microsoft.com/graph/api/driveitem-put-content (simple upload up to
//! 250 MB), .../driveitem-createuploadsession (fragments < 60 MiB, each a multiple of 320 KiB
//! except the last, sequential; `202` with `nextExpectedRanges` until the last; do not send
//! `Authorization` to the upload URL; `416` for a range already received; `GET` on the upload
//! URL for the session's status; `409` on a name
//! conflict with `fail`), and the OneDrive error list (413 Request Entity Too Large).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value};
use time::Duration;

use super::{
    context, created, no_content, resolve_user, tenant_of, Caller, GraphError, GraphResult,
    Workload,
};
use crate::notifications::{self, Change, ChangeTarget};
use crate::world::{guid, new_drive_item_id, random_secret, Drive, UploadSession, World};
use crate::{clock, AppState};

/// Largest simple upload.
pub const SIMPLE_UPLOAD_LIMIT: u64 = 250 * 1024 * 1024;
/// Upload session fragments must be multiples of this, except the last.
pub const FRAGMENT_UNIT: u64 = 320 * 1024;
/// Largest upload session fragment.
pub const FRAGMENT_LIMIT: u64 = 60 * 1024 * 1024;

const READ: [&str; 6] = [
    "Files.Read",
    "Files.Read.All",
    "Files.ReadWrite",
    "Files.ReadWrite.All",
    "Sites.Read.All",
    "Sites.ReadWrite.All",
];
const WRITE: [&str; 3] = [
    "Files.ReadWrite",
    "Files.ReadWrite.All",
    "Sites.ReadWrite.All",
];

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/users/{user}/drive", get(drive_info))
        .route("/v1.0/users/{user}/drive/root", get(root))
        .route("/v1.0/drives/{drive}/root", get(drive_root))
        .route(
            "/v1.0/users/{user}/drive/items/{id}",
            get(read_item).delete(delete_item),
        )
        .route(
            "/v1.0/users/{user}/drive/{*rest}",
            any(by_path).layer(axum::middleware::from_fn(reject_oversized)),
        )
        .route("/_upload/{session}", any(upload_fragment))
        // Bodies are checked against Graph's own limits below, not axum's 2 MB default.
        .layer(DefaultBodyLimit::max(
            usize::try_from(SIMPLE_UPLOAD_LIMIT + 1).unwrap_or(usize::MAX),
        ))
}

/// Answers an oversized simple upload from its `Content-Length` alone, before reading the body.
async fn reject_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if request.method() == Method::PUT && declared.is_some_and(|len| len > SIMPLE_UPLOAD_LIMIT) {
        return too_large().into_response();
    }
    next.run(request).await
}

fn too_large() -> GraphError {
    drive_error(StatusCode::PAYLOAD_TOO_LARGE, "invalidRequest", "The request size exceeds the maximum limit. Use an upload session for files larger than 250 MB.")
}

fn drive_error(status: StatusCode, code: &str, message: &str) -> GraphError {
    GraphError::new(status, code, message)
}

fn item_not_found() -> GraphError {
    drive_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The resource could not be found.",
    )
}

/// Opens a user's drive: resolves, checks access and provisioning.
fn open_drive<'w>(
    world: &'w mut World,
    caller: &Caller,
    segment: &str,
) -> Result<(String, String, &'w mut Drive), GraphError> {
    let tenant = tenant_of(world, caller)?;
    let user_id = resolve_user(tenant, caller, segment, Workload::Files)?;
    if caller.user_id.as_deref().is_some_and(|me| me != user_id)
        && !caller.permissions.iter().any(|p| p.ends_with(".All"))
    {
        return Err(drive_error(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "Access denied",
        ));
    }
    let tenant_id = tenant.id.clone();
    let user = tenant.users.get_mut(&user_id).expect("resolved");
    if !user.services_ready(clock::now()) {
        return Err(drive_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "User's mysite not found.",
        ));
    }
    Ok((tenant_id, user_id, user.drive.as_mut().expect("ready")))
}

fn with_context(state: &AppState, drive_id: &str, mut item: Value) -> Value {
    item["@odata.context"] = json!(context(
        state,
        &format!("drives('{drive_id}')/items/$entity")
    ));
    item
}

async fn drive_info(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> GraphResult {
    caller.require(Workload::Files, &READ)?;
    let mut world = state.world();
    let (_, user_id, drive) = open_drive(&mut world, &caller, &user)?;
    Ok(Json(json!({
        "@odata.context": context(&state, "drives/$entity"),
        "id": drive.id,
        "driveType": "business",
        "name": "OneDrive",
        "owner": {"user": {"id": user_id}},
        "quota": {"total": 1_099_511_627_776u64, "used": drive.items.values().filter_map(|i| i["size"].as_u64()).sum::<u64>(), "state": "normal"},
    }))
    .into_response())
}

async fn root(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> GraphResult {
    caller.require(Workload::Files, &READ)?;
    let mut world = state.world();
    let (_, _, drive) = open_drive(&mut world, &caller, &user)?;
    let item = drive.items[&drive.root_id].clone();
    Ok(Json(with_context(&state, &drive.id.clone(), item)).into_response())
}

/// `GET /drives/{drive-id}/root`: the form a OneDrive notification's `resource` may take.
async fn drive_root(
    State(state): State<AppState>,
    caller: Caller,
    Path(drive_id): Path<String>,
) -> GraphResult {
    caller.require(Workload::Files, &READ)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let owner = tenant
        .users
        .values()
        .find(|user| user.drive.as_ref().is_some_and(|d| d.id == drive_id))
        .map(|user| user.id.clone())
        .ok_or_else(item_not_found)?;
    let (_, _, drive) = open_drive(&mut world, &caller, &owner)?;
    let item = drive.items[&drive.root_id].clone();
    Ok(Json(with_context(&state, &drive.id.clone(), item)).into_response())
}

async fn read_item(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> GraphResult {
    caller.require(Workload::Files, &READ)?;
    let mut world = state.world();
    let (_, _, drive) = open_drive(&mut world, &caller, &user)?;
    let item = drive.items.get(&id).cloned().ok_or_else(item_not_found)?;
    Ok(Json(with_context(&state, &drive.id.clone(), item)).into_response())
}

async fn delete_item(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> GraphResult {
    caller.require(Workload::Files, &WRITE)?;
    let mut world = state.world();
    let (tenant, user_id, drive) = open_drive(&mut world, &caller, &user)?;
    if id == drive.root_id {
        return Err(drive_error(
            StatusCode::FORBIDDEN,
            "notAllowed",
            "The root folder cannot be deleted.",
        ));
    }
    drive.items.remove(&id).ok_or_else(item_not_found)?;
    let doomed: Vec<String> = drive
        .items
        .iter()
        .filter(|(_, i)| i["parentReference"]["id"] == json!(id))
        .map(|(k, _)| k.clone())
        .collect();
    for child in doomed {
        drive.items.remove(&child);
    }
    let change = drive_change(&tenant, &user_id, drive);
    notifications::publish(&state, &world, change);
    Ok(no_content())
}

fn drive_change(tenant: &str, user_id: &str, drive: &Drive) -> Change {
    // OneDrive for Business subscriptions watch the root; every change reports `updated`.
    Change {
        tenant: tenant.to_string(),
        change_type: "updated",
        target: ChangeTarget::DriveItem {
            user_id: user_id.to_string(),
        },
        resource: format!("users/{user_id}/drive/root"),
        other_forms: vec![format!("drives/{}/root", drive.id)],
        resource_data: json!({
            "@odata.type": "#Microsoft.Graph.DriveItem",
            "@odata.id": format!("users/{user_id}/drive/root"),
            "id": drive.root_id,
        }),
        content: None,
    }
}

/// `root:/a/b/c.txt:/content` → (["a","b","c.txt"], "content").
fn parse_path(rest: &str) -> Option<(Vec<String>, String)> {
    let inner = rest.strip_prefix("root:")?;
    let (path, action) = match inner.rsplit_once(":/") {
        Some((path, action)) => (path, action.to_string()),
        None => (inner.trim_end_matches(':'), String::new()),
    };
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    (!segments.is_empty()).then_some((segments, action))
}

fn child(drive: &Drive, parent: &str, name: &str) -> Option<String> {
    drive
        .items
        .iter()
        .find(|(_, item)| {
            item["parentReference"]["id"] == json!(parent)
                && item["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|(id, _)| id.clone())
}

fn folder_path(drive: &Drive, id: &str) -> String {
    let mut names = Vec::new();
    let mut current = id.to_string();
    while current != drive.root_id {
        let Some(item) = drive.items.get(&current) else {
            break;
        };
        names.push(item["name"].as_str().unwrap_or_default().to_string());
        current = item["parentReference"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    names.reverse();
    if names.is_empty() {
        "/drive/root:".into()
    } else {
        format!("/drive/root:/{}", names.join("/"))
    }
}

fn new_item(drive: &Drive, parent: &str, name: &str, actor: &Value) -> Value {
    let now = clock::graph(clock::now());
    json!({
        "id": new_drive_item_id(),
        "name": name,
        "createdDateTime": now,
        "lastModifiedDateTime": now,
        "eTag": format!("\"{{{}}},1\"", guid().to_uppercase()),
        "cTag": format!("\"c:{{{}}},1\"", guid().to_uppercase()),
        "createdBy": actor,
        "lastModifiedBy": actor,
        "parentReference": {"driveType": "business", "driveId": drive.id, "id": parent, "path": folder_path(drive, parent)},
        "fileSystemInfo": {"createdDateTime": now, "lastModifiedDateTime": now},
        "webUrl": format!("https://contoso-my.sharepoint.com/personal/Documents/{}", name.replace(' ', "%20")),
        "size": 0,
    })
}

/// Creates missing folders along `folders` and returns the last one's id.
fn ensure_folders(drive: &mut Drive, folders: &[String], actor: &Value) -> String {
    let mut parent = drive.root_id.clone();
    for name in folders {
        parent = match child(drive, &parent, name) {
            Some(id) => id,
            None => {
                let mut folder = new_item(drive, &parent, name, actor);
                folder["folder"] = json!({"childCount": 0});
                let id = folder["id"].as_str().unwrap_or_default().to_string();
                drive.items.insert(id.clone(), folder);
                id
            }
        };
    }
    parent
}

fn mime_type(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Stores a file; `conflict` is `replace`, `rename` or `fail`.
fn store_file(
    drive: &mut Drive,
    path: &[String],
    bytes: &[u8],
    actor: &Value,
    conflict: &str,
) -> Result<(Value, bool), GraphError> {
    let (name, folders) = path.split_last().expect("non-empty path");
    let parent = ensure_folders(drive, folders, actor);
    let existing = child(drive, &parent, name);
    let (mut item, is_new) = match (existing, conflict) {
        (Some(_), "fail") => {
            return Err(drive_error(
                StatusCode::CONFLICT,
                "nameAlreadyExists",
                "The specified item name already exists.",
            ))
        }
        (Some(id), "replace") => {
            let mut item = drive.items[&id].clone();
            item["lastModifiedBy"] = actor.clone();
            item["lastModifiedDateTime"] = json!(clock::graph(clock::now()));
            (item, false)
        }
        (Some(_), _) => {
            let renamed = format!("{name} {}", random_secret(4));
            (new_item(drive, &parent, &renamed, actor), true)
        }
        (None, _) => (new_item(drive, &parent, name, actor), true),
    };
    item["size"] = json!(bytes.len());
    item["file"] =
        json!({"mimeType": mime_type(name), "hashes": {"quickXorHash": random_secret(27)}});
    let id = item["id"].as_str().unwrap_or_default().to_string();
    drive.items.insert(id, item.clone());
    Ok((item, is_new))
}

async fn by_path(
    State(state): State<AppState>,
    caller: Caller,
    method: Method,
    Path((user, rest)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> GraphResult {
    let (path, action) = parse_path(&rest)
        .ok_or_else(|| GraphError::bad_request("invalidRequest", "Invalid path."))?;
    match (method, action.as_str()) {
        (Method::GET, "") => {
            caller.require(Workload::Files, &READ)?;
            let mut world = state.world();
            let (_, _, drive) = open_drive(&mut world, &caller, &user)?;
            let mut parent = drive.root_id.clone();
            for name in &path {
                parent = child(drive, &parent, name).ok_or_else(item_not_found)?;
            }
            let item = drive.items[&parent].clone();
            Ok(Json(with_context(&state, &drive.id.clone(), item)).into_response())
        }
        (Method::PUT, "content") => {
            caller.require(Workload::Files, &WRITE)?;
            if body.len() as u64 > SIMPLE_UPLOAD_LIMIT {
                return Err(too_large());
            }
            let conflict = query
                .get("@microsoft.graph.conflictBehavior")
                .map_or("replace", String::as_str)
                .to_string();
            let mut world = state.world();
            let actor = caller.identity_set(&world);
            let (tenant, user_id, drive) = open_drive(&mut world, &caller, &user)?;
            let (item, is_new) = store_file(drive, &path, &body, &actor, &conflict)?;
            let drive_id = drive.id.clone();
            let change = drive_change(&tenant, &user_id, drive);
            notifications::publish(&state, &world, change);
            let item = with_context(&state, &drive_id, item);
            Ok(if is_new {
                created(item)
            } else {
                Json(item).into_response()
            })
        }
        (Method::POST, "createUploadSession") => {
            caller.require(Workload::Files, &WRITE)?;
            let request: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).map_err(|_| {
                    GraphError::bad_request("invalidRequest", "Invalid request body.")
                })?
            };
            let conflict = request["item"]["@microsoft.graph.conflictBehavior"]
                .as_str()
                .unwrap_or("replace")
                .to_string();
            let mut world = state.world();
            let actor = caller.identity_set(&world);
            let (tenant, user_id, drive) = open_drive(&mut world, &caller, &user)?;
            if conflict == "fail" {
                let (name, folders) = path.split_last().expect("non-empty");
                let mut parent = Some(drive.root_id.clone());
                for folder in folders {
                    parent = parent.and_then(|p| child(drive, &p, folder));
                }
                if parent.is_some_and(|p| child(drive, &p, name).is_some()) {
                    return Err(drive_error(
                        StatusCode::CONFLICT,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    ));
                }
            }
            let expires = clock::now() + Duration::days(1);
            let id = random_secret(48);
            world.upload_sessions.insert(
                id.clone(),
                UploadSession {
                    tenant,
                    user_id,
                    path,
                    actor,
                    received: Vec::new(),
                    total: None,
                    expires,
                    conflict,
                },
            );
            Ok(Json(json!({
                "@odata.context": context(&state, "microsoft.graph.uploadSession"),
                "uploadUrl": format!("{}/_upload/{id}", state.base_url),
                "expirationDateTime": clock::graph(expires),
                "nextExpectedRanges": ["0-"],
            }))
            .into_response())
        }
        _ => Err(GraphError::bad_request(
            "invalidRequest",
            "Unsupported drive operation.",
        )),
    }
}

fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()?))
}

async fn upload_fragment(
    State(state): State<AppState>,
    method: Method,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> GraphResult {
    let mut world = state.world();
    let now = clock::now();
    if world
        .upload_sessions
        .get(&session)
        .is_none_or(|s| s.expires <= now)
    {
        world.upload_sessions.remove(&session);
        return Err(item_not_found());
    }
    if method == Method::DELETE {
        world.upload_sessions.remove(&session);
        return Ok(no_content());
    }
    if method == Method::GET {
        // The session's status: where an interrupted upload goes on.
        let upload = &world.upload_sessions[&session];
        return Ok(Json(json!({
            "expirationDateTime": clock::graph(upload.expires),
            "nextExpectedRanges": [format!("{}-", upload.received.len())],
        }))
        .into_response());
    }
    if method != Method::PUT {
        return Err(drive_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "notSupported",
            "Use PUT to upload fragments.",
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(drive_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Do not send an Authorization header to the upload URL; it is pre-authenticated.",
        ));
    }
    let (start, end, total) = content_range(&headers).ok_or_else(|| {
        GraphError::bad_request(
            "invalidRequest",
            "A valid Content-Range header is required.",
        )
    })?;
    let length = body.len() as u64;
    if end < start || end - start + 1 != length || end >= total {
        return Err(GraphError::bad_request(
            "invalidRequest",
            "The Content-Range header does not match the request body.",
        ));
    }
    if length > FRAGMENT_LIMIT {
        return Err(drive_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalidRequest",
            "Fragments must be smaller than 60 MiB.",
        ));
    }
    let upload = world.upload_sessions.get_mut(&session).expect("checked");
    if upload.total.is_some_and(|t| t != total) {
        return Err(GraphError::bad_request(
            "invalidRequest",
            "The total size changed during the upload session.",
        ));
    }
    let received = upload.received.len() as u64;
    if start != received {
        return Err(drive_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalidRange",
            &format!("The uploaded fragment does not start at the next expected byte {received}."),
        ));
    }
    let last = end + 1 == total;
    if !last && !length.is_multiple_of(FRAGMENT_UNIT) {
        return Err(GraphError::bad_request(
            "invalidRequest",
            "Fragments must be a multiple of 320 KiB (327,680 bytes), except the last.",
        ));
    }
    upload.total = Some(total);
    upload.received.extend_from_slice(&body);
    if !last {
        let expires = clock::graph(upload.expires);
        return Ok((StatusCode::ACCEPTED, Json(json!({"expirationDateTime": expires, "nextExpectedRanges": [format!("{}-", end + 1)]}))).into_response());
    }
    let upload = world.upload_sessions.remove(&session).expect("checked");
    let user = world
        .tenants
        .get_mut(&upload.tenant)
        .and_then(|t| t.users.get_mut(&upload.user_id))
        .ok_or_else(item_not_found)?;
    let drive = user.drive.as_mut().ok_or_else(item_not_found)?;
    let (item, is_new) = store_file(
        drive,
        &upload.path,
        &upload.received,
        &upload.actor,
        &upload.conflict,
    )?;
    let drive_id = drive.id.clone();
    let change = drive_change(&upload.tenant, &upload.user_id, drive);
    notifications::publish(&state, &world, change);
    let item = with_context(&state, &drive_id, item);
    Ok(if is_new {
        created(item)
    } else {
        Json(item).into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths_parse() {
        assert_eq!(
            parse_path("root:/a/b%20c.txt:/content"),
            Some((vec!["a".into(), "b c.txt".into()], "content".into()))
        );
        assert_eq!(
            parse_path("root:/x.bin:/createUploadSession"),
            Some((vec!["x.bin".into()], "createUploadSession".into()))
        );
        assert_eq!(
            parse_path("root:/folder"),
            Some((vec!["folder".into()], String::new()))
        );
        assert_eq!(parse_path("items/x"), None);
    }
}
