//! JSON batching: `POST /v1.0/$batch` with up to 20 requests, `dependsOn`, per-item status and
//! headers (a throttled item answers 429 with its own `Retry-After`).
//!
//! Source: https://learn.microsoft.com/graph/json-batching (at most 20 requests; ids unique;
//! `headers` with `Content-Type` required when a `body` is present; responses in any order; a
//! request whose dependency failed answers `424 Failed Dependency`; the batch answers 200 when
//! it parses and 400 when it is malformed). Each item goes through the same routes, throttling
//! and faults as a direct request.

use std::collections::{BTreeMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::{canonical_path, json_object, GraphError, GraphResult};
use crate::AppState;

/// Most requests in one batch.
pub const MAX_REQUESTS: usize = 20;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1.0/$batch", post(batch))
}

fn malformed(message: impl Into<String>) -> GraphError {
    GraphError::bad_request("BadRequest", message)
}

struct Item {
    id: String,
    method: Method,
    url: String,
    headers: Map<String, Value>,
    body: Option<Vec<u8>>,
    depends_on: Vec<String>,
}

fn parse_item(value: &Value) -> Result<Item, GraphError> {
    let id = value
        .get("id")
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .ok_or_else(|| malformed("Each batch request needs an id."))?;
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
        .ok_or_else(|| malformed(format!("Request {id} has no valid method.")))?;
    let url = value
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("Request {id} has no url.")))?
        .to_string();
    if url.contains("://") {
        return Err(malformed(format!(
            "Request {id}: the url must be relative, e.g. /users."
        )));
    }
    let headers = value
        .get("headers")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let body = match value.get("body") {
        None | Some(Value::Null) => None,
        Some(body) => {
            if !headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                return Err(malformed(format!(
                    "Request {id}: a Content-Type header is required when a body is present."
                )));
            }
            Some(match body {
                // Non-JSON bodies travel base64-encoded.
                Value::String(text) => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_else(|_| text.clone().into_bytes()),
                other => serde_json::to_vec(other).unwrap_or_default(),
            })
        }
    };
    let depends_on = value
        .get("dependsOn")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Ok(Item {
        id,
        method,
        url,
        headers,
        body,
        depends_on,
    })
}

async fn run_item(
    state: AppState,
    item: Item,
    authorization: Option<axum::http::HeaderValue>,
) -> Value {
    let Some(router) = state.router() else {
        return json!({"id": item.id, "status": 503});
    };
    let relative = if item.url.starts_with('/') {
        item.url.clone()
    } else {
        format!("/{}", item.url)
    };
    let (path, query) = match relative.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (relative, None),
    };
    let mut uri = canonical_path(&format!("/v1.0{path}"));
    if let Some(query) = query {
        uri = format!("{uri}?{query}");
    }
    let mut builder = Request::builder().method(item.method).uri(uri);
    for (key, value) in &item.headers {
        if let Some(value) = value.as_str() {
            builder = builder.header(key.as_str(), value);
        }
    }
    if let Some(auth) = authorization {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    let Ok(request) = builder.body(Body::from(item.body.unwrap_or_default())) else {
        return json!({"id": item.id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Invalid request."}}});
    };
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for name in ["content-type", "retry-after", "location"] {
        if let Some(value) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
            let key = if name == "content-type" {
                "Content-Type".to_string()
            } else if name == "retry-after" {
                "Retry-After".to_string()
            } else {
                "Location".to_string()
            };
            headers.insert(key, json!(value));
        }
    }
    let is_json = headers
        .get("Content-Type")
        .and_then(Value::as_str)
        .is_some_and(|c| c.contains("json"));
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut out = json!({"id": item.id, "status": status, "headers": headers});
    if !bytes.is_empty() {
        out["body"] = if is_json {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        } else {
            json!(base64::engine::general_purpose::STANDARD.encode(&bytes))
        };
    }
    out
}

async fn batch(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> GraphResult {
    let input = json_object(&body)?;
    let requests = input
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("Invalid batch payload format."))?;
    if requests.is_empty() {
        return Err(malformed("Invalid batch payload format."));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(malformed(format!(
            "Number of batch request steps exceeds the maximum of {MAX_REQUESTS}."
        )));
    }
    let items: Vec<Item> = requests.iter().map(parse_item).collect::<Result<_, _>>()?;
    let mut seen = HashSet::new();
    for item in &items {
        if !seen.insert(item.id.to_ascii_lowercase()) {
            return Err(malformed("Batch request contains duplicate request ids."));
        }
    }
    let mut earlier = HashSet::new();
    for item in &items {
        if let Some(missing) = item
            .depends_on
            .iter()
            .find(|d| !earlier.contains(&d.to_ascii_lowercase()))
        {
            return Err(malformed(format!(
                "Request {} depends on '{missing}', which is not an earlier request of the batch.",
                item.id
            )));
        }
        earlier.insert(item.id.to_ascii_lowercase());
    }
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let sequential = items.iter().any(|i| !i.depends_on.is_empty());
    let mut responses = Vec::new();
    if sequential {
        let mut statuses: BTreeMap<String, u16> = BTreeMap::new();
        for item in items {
            let failed = item.depends_on.iter().any(|d| {
                statuses
                    .get(&d.to_ascii_lowercase())
                    .is_none_or(|s| *s >= 400)
            });
            let id_key = item.id.to_ascii_lowercase();
            let response = if failed {
                json!({"id": item.id, "status": 424, "body": {"error": {"code": "FailedDependency", "message": "The request depends on a request that failed."}}})
            } else {
                run_item(state.clone(), item, authorization.clone()).await
            };
            statuses.insert(
                id_key,
                u16::try_from(response["status"].as_u64().unwrap_or(500)).unwrap_or(500),
            );
            responses.push(response);
        }
    } else {
        let mut set = JoinSet::new();
        for item in items {
            set.spawn(run_item(state.clone(), item, authorization.clone()));
        }
        while let Some(done) = set.join_next().await {
            responses.push(done.unwrap_or_else(|_| json!({"status": 500})));
        }
    }
    Ok((StatusCode::OK, Json(json!({"responses": responses}))).into_response())
}
