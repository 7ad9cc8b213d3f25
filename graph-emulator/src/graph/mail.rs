//! Mail: messages in mailbox folders, and `sendMail`.
//!
//! Sources: https://learn.microsoft.com/graph/api/user-post-messages (a message created in a
//! folder is a draft), MS-OXCMSG PidTagMessageFlags (`singleValueExtendedProperties` with id
//! `Integer 0x0E07`: `mfRead` 0x1, `mfUnsent` 0x8; settable only at creation), and
//! .../user-sendmail (`202 Accepted`; delivered to the recipients' Inbox, a copy in Sent Items
//! unless `saveToSentItems` is false), .../message-send (a draft sent) and .../message-reply
//! (same conversation, `In-Reply-To`). Every copy of a sent message has the same
//! internetMessageId and conversationId.
//!
//! `from` and `sender`: on a created message they are what the request gives (`sender` follows
//! `from` when only `from` is given); on a sent message `sender` is the sending mailbox and `from`
//! is the given `from` (send-as) or the mailbox.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{
    context, created, json_object, mailbox_not_enabled, no_content, page, resolve_user, select,
    tenant_of, Caller, GraphError, GraphResult, Workload,
};
use crate::notifications::{self, Change, ChangeTarget};
use crate::world::{new_outlook_id, random_secret, User, World};
use crate::{clock, AppState};

const READ: [&str; 5] = [
    "Mail.Read",
    "Mail.ReadWrite",
    "Mail.ReadBasic",
    "Mail.ReadBasic.All",
    "Mail.Read.Shared",
];
const WRITE: [&str; 2] = ["Mail.ReadWrite", "Mail.ReadWrite.Shared"];
const SEND: [&str; 2] = ["Mail.Send", "Mail.Send.Shared"];

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1.0/users/{user}/messages",
            get(list_all).post(create_in_drafts),
        )
        .route(
            "/v1.0/users/{user}/messages/{id}",
            get(read_any).patch(update_any).delete(delete_any),
        )
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/messages",
            get(list_folder).post(create_in_folder),
        )
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/messages/{id}",
            get(read_in_folder).delete(delete_in_folder),
        )
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/messages/delta",
            get(delta),
        )
        .route("/v1.0/users/{user}/sendMail", post(send_mail))
        .route("/v1.0/users/{user}/messages/{id}/send", post(send_draft))
        .route("/v1.0/users/{user}/messages/{id}/reply", post(reply))
}

/// Page size of delta answers (Graph's default for messages is 10).
const DELTA_PAGE: usize = 10;

/// `GET .../mailFolders/{folder}/messages/delta`: without a token, every message of the
/// folder; with `$deltatoken`, the messages changed since (their current state) and the ones
/// gone from the folder as `@removed`. Pages carry `@odata.nextLink` (`$skiptoken`), the last
/// one `@odata.deltaLink`. A token the emulator did not hand out answers 410
/// `SyncStateNotFound`, as Graph answers an expired one. Source:
/// https://learn.microsoft.com/graph/api/message-delta and .../delta-query-messages.
async fn delta(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(Workload::Outlook, &READ)?;
    let gone = || {
        GraphError::new(
            StatusCode::GONE,
            "SyncStateNotFound",
            "The sync state generation is not found.",
        )
    };
    let mut world = state.world();
    let (_, user_id, mailbox) = open_mailbox_mut(&mut world, &caller, &user)?;
    let folder_id = mailbox
        .folder(&folder)
        .ok_or_else(folder_not_found)?
        .id
        .clone();
    // `$skiptoken` = "{since}.{offset}" (since = "all" for the first sync).
    let (since, offset) = match (query.get("$deltatoken"), query.get("$skiptoken")) {
        (Some(token), _) => (Some(token.parse::<u64>().map_err(|_| gone())?), 0),
        (None, Some(token)) => {
            let (since, offset) = token.split_once('.').ok_or_else(gone)?;
            let since = match since {
                "all" => None,
                n => Some(n.parse::<u64>().map_err(|_| gone())?),
            };
            (since, offset.parse::<usize>().map_err(|_| gone())?)
        }
        (None, None) => (None, 0),
    };
    if since.is_some_and(|since| since > mailbox.sequence()) {
        return Err(gone());
    }
    let items: Vec<Value> = match since {
        None => mailbox
            .messages
            .values()
            .filter(|m| m["parentFolderId"] == folder_id.as_str())
            .map(|m| select(m, &query))
            .collect(),
        Some(since) => {
            let mut changed: Vec<&str> = Vec::new();
            for change in mailbox
                .message_changes
                .iter()
                .filter(|c| c.sequence > since)
            {
                if change.folder_id == folder_id && !changed.contains(&change.message_id.as_str()) {
                    changed.push(&change.message_id);
                }
            }
            changed
                .into_iter()
                .map(|id| match mailbox.messages.get(id) {
                    Some(m) if m["parentFolderId"] == folder_id.as_str() => select(m, &query),
                    _ => json!({"@odata.type": "#microsoft.graph.message", "id": id, "@removed": {"reason": "deleted"}}),
                })
                .collect()
        }
    };
    let link = |token: &str| {
        let mut url = url::Url::parse(&format!(
            "{}/v1.0/users/{user_id}/mailFolders/{folder_id}/messages/delta",
            state.base_url
        ))
        .expect("own base URL");
        if let Some(select) = query.get("$select") {
            url.query_pairs_mut().append_pair("$select", select);
        }
        url.query_pairs_mut().append_pair(
            if token.contains('.') {
                "$skiptoken"
            } else {
                "$deltatoken"
            },
            token,
        );
        url.to_string()
    };
    let page: Vec<Value> = items
        .iter()
        .skip(offset)
        .take(DELTA_PAGE)
        .cloned()
        .collect();
    let mut out = json!({
        "@odata.context": context(&state, &format!("users('{user_id}')/mailFolders('{folder_id}')/messages(*)")),
        "value": page,
    });
    if offset + DELTA_PAGE < items.len() {
        let since = since.map_or_else(|| "all".to_string(), |s| s.to_string());
        out["@odata.nextLink"] = json!(link(&format!("{since}.{}", offset + DELTA_PAGE)));
    } else {
        out["@odata.deltaLink"] = json!(link(&mailbox.sequence().to_string()));
    }
    Ok(Json(out).into_response())
}

/// Delegated callers reach only their own mailbox unless they hold a `.Shared` scope.
fn check_mailbox_access(caller: &Caller, user_id: &str) -> Result<(), GraphError> {
    match &caller.user_id {
        Some(me) if me != user_id && !caller.permissions.iter().any(|p| p.ends_with(".Shared")) => {
            Err(GraphError::new(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ))
        }
        _ => Ok(()),
    }
}

/// Resolves the mailbox owner and checks access and provisioning; returns the tenant id and
/// user id.
pub fn open_mailbox(
    world: &mut World,
    caller: &Caller,
    segment: &str,
) -> Result<(String, String), GraphError> {
    let tenant = tenant_of(world, caller)?;
    let user_id = resolve_user(tenant, caller, segment, Workload::Outlook)?;
    check_mailbox_access(caller, &user_id)?;
    let out_of_scope = caller.is_app_only()
        && tenant
            .mailbox_scopes
            .get(&caller.client_id)
            .is_some_and(|allowed| !allowed.contains(&user_id));
    if out_of_scope {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access to OData is disabled.",
        ));
    }
    let user = tenant.users.get_mut(&user_id).expect("resolved");
    if !user.services_ready(clock::now()) {
        return Err(mailbox_not_enabled());
    }
    Ok((tenant.id.clone(), user_id))
}

/// Opens the mailbox a path names for reading or writing: (tenant id, user id, mailbox).
pub fn open_mailbox_mut<'w>(
    world: &'w mut World,
    caller: &Caller,
    segment: &str,
) -> Result<(String, String, &'w mut crate::world::Mailbox), GraphError> {
    let (tenant, user_id) = open_mailbox(world, caller, segment)?;
    let mailbox = user_mut(world, &tenant, &user_id)
        .mailbox
        .as_mut()
        .expect("provisioned by open_mailbox");
    Ok((tenant, user_id, mailbox))
}

fn etag() -> String {
    format!("CQAAABYAAAD{}", random_secret(20))
}

/// A message as Graph renders it, with `isDraft` and `isRead` from the message flags.
fn new_message(
    input: &Map<String, Value>,
    folder_id: &str,
    is_draft: bool,
    is_read: bool,
    from: Value,
    sender: Value,
) -> Value {
    let now = clock::graph(clock::now());
    let change_key = etag();
    let body = input
        .get("body")
        .cloned()
        .unwrap_or_else(|| json!({"contentType": "text", "content": ""}));
    let preview: String = body["content"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(255)
        .collect();
    let id = new_outlook_id("AAMkAG");
    json!({
        "@odata.etag": format!("W/\"{change_key}\""),
        "id": id,
        "createdDateTime": now,
        "lastModifiedDateTime": now,
        "changeKey": change_key,
        "categories": input.get("categories").cloned().unwrap_or_else(|| json!([])),
        "receivedDateTime": now,
        "sentDateTime": now,
        "hasAttachments": false,
        "internetMessageId": format!("<{}@graph-emulator>", random_secret(24)),
        "subject": input.get("subject").cloned().unwrap_or(Value::Null),
        "bodyPreview": preview,
        "importance": input.get("importance").cloned().unwrap_or_else(|| json!("normal")),
        "parentFolderId": folder_id,
        "conversationId": new_outlook_id("AAQkAG"),
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": false,
        "isRead": is_read,
        "isDraft": is_draft,
        "webLink": format!("https://outlook.office365.com/owa/?ItemID={id}&exvsurl=1&viewmodel=ReadMessageItem"),
        "inferenceClassification": "focused",
        "body": body,
        "sender": sender,
        "from": from,
        "toRecipients": input.get("toRecipients").cloned().unwrap_or_else(|| json!([])),
        "ccRecipients": input.get("ccRecipients").cloned().unwrap_or_else(|| json!([])),
        "bccRecipients": input.get("bccRecipients").cloned().unwrap_or_else(|| json!([])),
        "replyTo": input.get("replyTo").cloned().unwrap_or_else(|| json!([])),
        "flag": {"flagStatus": "notFlagged"},
    })
}

/// The `singleValueExtendedProperties` given at creation, as (id, value).
fn extended_properties(input: &Map<String, Value>) -> Vec<(String, String)> {
    input
        .get("singleValueExtendedProperties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p.get("id")?.as_str()?.to_string();
            let value = p.get("value")?;
            let value = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Some((id, value))
        })
        .collect()
}

/// PR_MESSAGE_FLAGS from `singleValueExtendedProperties`, if given.
fn message_flags(input: &Map<String, Value>) -> Option<i64> {
    input
        .get("singleValueExtendedProperties")?
        .as_array()?
        .iter()
        .find(|p| {
            p.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.eq_ignore_ascii_case("Integer 0x0E07"))
        })
        .and_then(|p| p.get("value"))
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        })
        .and_then(|v| v.parse().ok())
}

fn message_change(
    tenant: &str,
    user_id: &str,
    message: &Value,
    change_type: &'static str,
) -> Change {
    let id = message["id"].as_str().unwrap_or_default();
    Change {
        tenant: tenant.to_string(),
        change_type,
        target: ChangeTarget::Message {
            user_id: user_id.to_string(),
            folder_id: message["parentFolderId"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        },
        // The shape of the published Outlook sample.
        resource: format!("users/{user_id}@{tenant}/messages/{id}"),
        other_forms: vec![
            format!("Users/{user_id}/Messages/{id}"),
            format!("Users('{user_id}')/messages('{id}')"),
        ],
        resource_data: json!({
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": format!("Users/{user_id}@{tenant}/Messages/{id}"),
            "@odata.etag": message["@odata.etag"],
            "id": id,
        }),
        content: Some(message.clone()),
    }
}

fn user_mut<'w>(world: &'w mut World, tenant: &str, user_id: &str) -> &'w mut User {
    world
        .tenants
        .get_mut(tenant)
        .and_then(|t| t.users.get_mut(user_id))
        .expect("resolved")
}

fn item_not_found() -> GraphError {
    GraphError::not_found(
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn folder_not_found() -> GraphError {
    GraphError::not_found(
        "ErrorItemNotFound",
        "The specified folder could not be found in the store.",
    )
}

async fn create(
    state: AppState,
    caller: Caller,
    user: String,
    folder: String,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let input = json_object(&body)?;
    let mut world = state.world();
    let (tenant, user_id, mailbox) = open_mailbox_mut(&mut world, &caller, &user)?;
    let folder_id = mailbox
        .folder(&folder)
        .ok_or_else(folder_not_found)?
        .id
        .clone();
    let (is_draft, is_read) = match message_flags(&input) {
        Some(flags) => (flags & 0x8 != 0, flags & 0x1 != 0),
        None => (true, true),
    };
    let from = input.get("from").cloned().unwrap_or(Value::Null);
    let sender = input.get("sender").cloned().unwrap_or_else(|| from.clone());
    let message = new_message(&input, &folder_id, is_draft, is_read, from, sender);
    let extended = extended_properties(&input);
    if !extended.is_empty() {
        let id = message["id"].as_str().unwrap_or_default().to_string();
        mailbox.extended_properties.insert(id, extended);
    }
    mailbox.put_message(message.clone());
    notifications::publish(
        &state,
        &world,
        message_change(&tenant, &user_id, &message, "created"),
    );
    let mut out = message;
    out["@odata.context"] = json!(context(
        &state,
        &format!("users('{user_id}')/messages/$entity")
    ));
    Ok(created(out))
}

async fn create_in_drafts(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> GraphResult {
    create(state, caller, user, "drafts".into(), body).await
}

async fn create_in_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, folder)): Path<(String, String)>,
    body: Bytes,
) -> GraphResult {
    create(state, caller, user, folder, body).await
}

/// The message filters the emulator models, as Graph documents them:
/// `internetMessageId eq '<id>'`, `receivedDateTime ge <DateTimeOffset>` (unquoted, as OData
/// writes date literals; api-reference/v1.0/api/user-list-messages.md) and
/// `singleValueExtendedProperties/Any(ep: ep/id eq '<property>' and ep/value eq '<value>')`
/// (quotes doubled inside). Anything else is refused rather than ignored, so a caller never
/// mistakes an unfiltered list for a match.
enum MessageFilter {
    InternetMessageId(String),
    ReceivedSince(time::OffsetDateTime),
    ExtendedProperty { id: String, value: String },
}

impl MessageFilter {
    fn parse(filter: &str) -> Result<Self, GraphError> {
        let invalid = || {
            GraphError::bad_request(
                "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes.",
            )
        };
        let quoted = |value: &str| -> Result<String, GraphError> {
            let inner = value
                .trim()
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(invalid)?;
            Ok(inner.replace("''", "'"))
        };
        let filter = filter.trim();
        if let Some(inner) = filter
            .strip_prefix("singleValueExtendedProperties/Any(")
            .and_then(|f| f.strip_suffix(')'))
        {
            let (variable, condition) = inner.split_once(':').ok_or_else(invalid)?;
            let variable = variable.trim();
            let (id_part, value_part) = condition.split_once(" and ").ok_or_else(invalid)?;
            let id = id_part
                .trim()
                .strip_prefix(&format!("{variable}/id eq "))
                .ok_or_else(invalid)?;
            let value = value_part
                .trim()
                .strip_prefix(&format!("{variable}/value eq "))
                .ok_or_else(invalid)?;
            return Ok(Self::ExtendedProperty {
                id: quoted(id)?,
                value: quoted(value)?,
            });
        }
        if let Some((property, value)) = filter.split_once(" ge ") {
            if !property.trim().eq_ignore_ascii_case("receivedDateTime") {
                return Err(invalid());
            }
            let at = time::OffsetDateTime::parse(
                value.trim(),
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|_| invalid())?;
            return Ok(Self::ReceivedSince(at));
        }
        let (property, value) = filter.split_once(" eq ").ok_or_else(invalid)?;
        if !property.trim().eq_ignore_ascii_case("internetMessageId") {
            return Err(invalid());
        }
        Ok(Self::InternetMessageId(quoted(value)?))
    }

    fn matches(&self, mailbox: &crate::world::Mailbox, message: &Value) -> bool {
        match self {
            Self::InternetMessageId(id) => message["internetMessageId"] == id.as_str(),
            Self::ReceivedSince(since) => message["receivedDateTime"]
                .as_str()
                .and_then(|at| {
                    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|at| at >= *since),
            Self::ExtendedProperty { id, value } => message["id"]
                .as_str()
                .and_then(|m| mailbox.extended_properties.get(m))
                .is_some_and(|props| {
                    props
                        .iter()
                        .any(|(p, v)| p.eq_ignore_ascii_case(id) && v == value)
                }),
        }
    }
}

fn list(
    state: &AppState,
    caller: &Caller,
    uri: &Uri,
    user: &str,
    folder: Option<&str>,
    query: &BTreeMap<String, String>,
) -> GraphResult {
    caller.require(Workload::Outlook, &READ)?;
    let mut world = state.world();
    let (_, user_id, mailbox) = open_mailbox_mut(&mut world, caller, user)?;
    let folder_id = match folder {
        Some(folder) => Some(
            mailbox
                .folder(folder)
                .ok_or_else(folder_not_found)?
                .id
                .clone(),
        ),
        None => None,
    };
    let wanted = match query.get("$filter") {
        Some(filter) => Some(MessageFilter::parse(filter)?),
        None => None,
    };
    let mut items: Vec<Value> = mailbox
        .messages
        .values()
        .filter(|m| {
            folder_id
                .as_deref()
                .is_none_or(|f| m["parentFolderId"] == f)
        })
        .filter(|m| wanted.as_ref().is_none_or(|f| f.matches(mailbox, m)))
        .cloned()
        .collect();
    items.sort_by(|a, b| {
        b["receivedDateTime"]
            .as_str()
            .cmp(&a["receivedDateTime"].as_str())
    });
    page(
        state,
        uri,
        &format!("users('{user_id}')/messages"),
        items,
        query,
        10,
    )
}

async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(user): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    list(&state, &caller, &uri, &user, None, &query)
}

async fn list_folder(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    list(&state, &caller, &uri, &user, Some(&folder), &query)
}

fn read(
    state: &AppState,
    caller: &Caller,
    user: &str,
    id: &str,
    query: &BTreeMap<String, String>,
) -> GraphResult {
    caller.require(Workload::Outlook, &READ)?;
    let mut world = state.world();
    let (_, user_id, mailbox) = open_mailbox_mut(&mut world, caller, user)?;
    let message = mailbox.messages.get(id).ok_or_else(item_not_found)?;
    let mut out = select(message, query);
    out["@odata.context"] = json!(context(
        state,
        &format!("users('{user_id}')/messages/$entity")
    ));
    Ok(Json(out).into_response())
}

async fn read_any(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    read(&state, &caller, &user, &id, &query)
}

async fn read_in_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, _folder, id)): Path<(String, String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    read(&state, &caller, &user, &id, &query)
}

async fn update_any(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let input = json_object(&body)?;
    let mut world = state.world();
    let (tenant, user_id, mailbox) = open_mailbox_mut(&mut world, &caller, &user)?;
    let message = mailbox.messages.get_mut(&id).ok_or_else(item_not_found)?;
    let is_draft = message["isDraft"].as_bool().unwrap_or(false);
    for (key, value) in input {
        let editable = matches!(
            key.as_str(),
            "isRead" | "categories" | "importance" | "flag" | "inferenceClassification"
        ) || (is_draft
            && matches!(
                key.as_str(),
                "subject"
                    | "body"
                    | "toRecipients"
                    | "ccRecipients"
                    | "bccRecipients"
                    | "from"
                    | "replyTo"
            ));
        if !editable {
            return Err(GraphError::bad_request(
                "ErrorInvalidPropertyUpdateSentMessage",
                format!("Update operation is not allowed on property '{key}' for this message."),
            ));
        }
        message[key.as_str()] = value;
    }
    let change_key = etag();
    message["changeKey"] = json!(change_key);
    message["@odata.etag"] = json!(format!("W/\"{change_key}\""));
    message["lastModifiedDateTime"] = json!(clock::graph(clock::now()));
    let out = message.clone();
    mailbox.record_message_change(&out);
    notifications::publish(
        &state,
        &world,
        message_change(&tenant, &user_id, &out, "updated"),
    );
    Ok(Json(out).into_response())
}

fn delete(state: &AppState, caller: &Caller, user: &str, id: &str) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let mut world = state.world();
    let (tenant, user_id, mailbox) = open_mailbox_mut(&mut world, caller, user)?;
    let message = mailbox.take_message(id).ok_or_else(item_not_found)?;
    notifications::publish(
        state,
        &world,
        message_change(&tenant, &user_id, &message, "deleted"),
    );
    Ok(no_content())
}

async fn delete_any(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> GraphResult {
    delete(&state, &caller, &user, &id)
}

async fn delete_in_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, _folder, id)): Path<(String, String, String)>,
) -> GraphResult {
    delete(&state, &caller, &user, &id)
}

fn addresses(message: &Map<String, Value>) -> Vec<String> {
    ["toRecipients", "ccRecipients", "bccRecipients"]
        .iter()
        .filter_map(|key| message.get(*key).and_then(Value::as_array))
        .flatten()
        .filter_map(|r| r["emailAddress"]["address"].as_str().map(str::to_string))
        .collect()
}

async fn send_mail(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &SEND)?;
    let input = json_object(&body)?;
    let Some(Value::Object(message)) = input.get("message") else {
        return Err(GraphError::bad_request(
            "ErrorInvalidParameter",
            "The value of the parameter 'Message' is empty.",
        ));
    };
    let recipients = addresses(message);
    if recipients.is_empty() {
        return Err(GraphError::bad_request("ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients."));
    }
    let save = input
        .get("saveToSentItems")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let sent = Sending {
        internet_message_id: format!("<{}@graph-emulator>", random_secret(24)),
        conversation_id: new_outlook_id("AAQkAG"),
        headers: None,
    };
    deliver(&state, &mut world, &tenant, &user_id, message, save, &sent);
    Ok(StatusCode::ACCEPTED.into_response())
}

/// What every copy of a sent message shares: Exchange gives the sender's copy and each
/// recipient's the same internetMessageId and conversation, and a reply's copies its
/// `In-Reply-To` and `References` headers.
struct Sending {
    internet_message_id: String,
    conversation_id: String,
    headers: Option<Value>,
}

/// Delivers `message` from `user_id`'s mailbox: a copy in Sent Items when `save`, one in each
/// emulated recipient's Inbox (external recipients leave the emulated cloud).
fn deliver(
    state: &AppState,
    world: &mut World,
    tenant: &str,
    user_id: &str,
    message: &Map<String, Value>,
    save: bool,
    sent: &Sending,
) {
    let owner = user_mut(world, tenant, user_id).email_address();
    let from = message
        .get("from")
        .cloned()
        .unwrap_or_else(|| owner.clone());
    let shared = |mut copy: Value| {
        copy["internetMessageId"] = json!(sent.internet_message_id);
        copy["conversationId"] = json!(sent.conversation_id);
        if let Some(headers) = &sent.headers {
            copy["internetMessageHeaders"] = headers.clone();
        }
        copy
    };
    let mut changes = Vec::new();
    if save {
        let mailbox = user_mut(world, tenant, user_id)
            .mailbox
            .as_mut()
            .expect("ready");
        let folder = mailbox.folder("sentitems").expect("provisioned").id.clone();
        let copy = shared(new_message(
            message,
            &folder,
            false,
            true,
            from.clone(),
            owner.clone(),
        ));
        mailbox.put_message(copy.clone());
        changes.push(message_change(tenant, user_id, &copy, "created"));
    }
    let now = clock::now();
    for address in addresses(message) {
        let found = world
            .tenants
            .iter()
            .find_map(|(tid, t)| t.user_by_address(&address).map(|u| (tid.clone(), u)));
        let Some((recipient_tenant, recipient_id)) = found else {
            continue;
        };
        let recipient = user_mut(world, &recipient_tenant, &recipient_id);
        if !recipient.services_ready(now) {
            continue;
        }
        let mailbox = recipient.mailbox.as_mut().expect("ready");
        let inbox = mailbox.folder("inbox").expect("provisioned").id.clone();
        let copy = shared(new_message(
            message,
            &inbox,
            false,
            false,
            from.clone(),
            owner.clone(),
        ));
        mailbox.put_message(copy.clone());
        changes.push(message_change(
            &recipient_tenant,
            &recipient_id,
            &copy,
            "created",
        ));
    }
    for change in changes {
        notifications::publish(state, world, change);
    }
    state.count("mail_sent");
}

/// `POST /users/{user}/messages/{id}/send`: sends a draft (it leaves Drafts; its
/// internetMessageId and conversation go with it). 202, no body. A message that is not a draft
/// cannot be sent again. Source: https://learn.microsoft.com/graph/api/message-send.
async fn send_draft(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> GraphResult {
    caller.require(Workload::Outlook, &SEND)?;
    let mut world = state.world();
    let (tenant, user_id, mailbox) = open_mailbox_mut(&mut world, &caller, &user)?;
    let draft = mailbox
        .messages
        .get(&id)
        .ok_or_else(item_not_found)?
        .clone();
    if draft["isDraft"] != json!(true) {
        return Err(GraphError::bad_request(
            "ErrorInvalidOperation",
            "The item has already been sent.",
        ));
    }
    let Value::Object(message) = &draft else {
        unreachable!("messages are objects")
    };
    if addresses(message).is_empty() {
        return Err(GraphError::bad_request("ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients."));
    }
    mailbox.messages.remove(&id);
    // The item moves to Sent Items with its MAPI properties.
    let properties = mailbox.extended_properties.remove(&id);
    let sent = Sending {
        internet_message_id: draft["internetMessageId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        conversation_id: draft["conversationId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        headers: None,
    };
    let mut message = message.clone();
    message.remove("from");
    deliver(&state, &mut world, &tenant, &user_id, &message, true, &sent);
    if let Some(properties) = properties {
        if let Some(mailbox) = user_mut(&mut world, &tenant, &user_id).mailbox.as_mut() {
            let sent_items = mailbox.folder("sentitems").map(|f| f.id.clone());
            let copy = mailbox
                .messages
                .values()
                .find(|m| {
                    m["internetMessageId"] == sent.internet_message_id.as_str()
                        && sent_items
                            .as_deref()
                            .is_some_and(|f| m["parentFolderId"] == f)
                })
                .and_then(|m| m["id"].as_str().map(str::to_string));
            if let Some(copy) = copy {
                mailbox.extended_properties.insert(copy, properties);
            }
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST /users/{user}/messages/{id}/reply` with `comment`: replies to the message's sender
/// (its `replyTo` when set) in the same conversation, `RE:` before the subject, `In-Reply-To`
/// and `References` naming the original. 202, no body. Source:
/// https://learn.microsoft.com/graph/api/message-reply.
async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &SEND)?;
    let input = if body.is_empty() {
        Map::new()
    } else {
        json_object(&body)?
    };
    let mut world = state.world();
    let (tenant, user_id, mailbox) = open_mailbox_mut(&mut world, &caller, &user)?;
    let original = mailbox
        .messages
        .get(&id)
        .ok_or_else(item_not_found)?
        .clone();
    let to = match original["replyTo"].as_array().filter(|r| !r.is_empty()) {
        Some(reply_to) => Value::Array(reply_to.clone()),
        None => json!([{"emailAddress": original["from"]["emailAddress"].clone()}]),
    };
    let subject = original["subject"].as_str().unwrap_or_default();
    let mut message = Map::new();
    message.insert("subject".into(), json!(format!("RE: {subject}")));
    message.insert(
        "body".into(),
        json!({"contentType": "text", "content": input.get("comment").and_then(Value::as_str).unwrap_or_default()}),
    );
    message.insert("toRecipients".into(), to);
    let original_id = original["internetMessageId"].as_str().unwrap_or_default();
    let sent = Sending {
        internet_message_id: format!("<{}@graph-emulator>", random_secret(24)),
        conversation_id: original["conversationId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        headers: Some(json!([
            {"name": "In-Reply-To", "value": original_id},
            {"name": "References", "value": original_id},
        ])),
    };
    deliver(&state, &mut world, &tenant, &user_id, &message, true, &sent);
    Ok(StatusCode::ACCEPTED.into_response())
}
