//! Teams chats and chat messages.
//!
//! Sources: https://learn.microsoft.com/graph/api/chat-post (every member, the caller included,
//! is listed; a one-on-one chat that exists already is returned instead of a new one),
//! .../chat-post-messages (delegated `ChatMessage.Send`; application permissions only for
//! import: "Message POST is allowed in application-only context only for import purposes"),
//! .../chatmessage-softdelete, and https://learn.microsoft.com/microsoftteams/platform/graph-api/import-messages/import-external-messages-to-teams
//! (migration mode with `Teamwork.Migrate.All`; imported messages carry `createdDateTime` and
//! `from`). The emulator models migration for chats with
//! `@microsoft.graph.chatCreationMode: "migration"`, mirroring `teamCreationMode`.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::{
    context, created, json_object, page, tenant_of, Caller, GraphError, GraphResult, Workload,
};
use crate::notifications::{self, Change, ChangeTarget};
use crate::world::Chat;
use crate::{clock, AppState};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/chats", post(create_chat))
        .route(
            "/v1.0/chats/{chat}/messages",
            post(post_message).get(list_messages),
        )
        .route(
            "/v1.0/users/{user}/chats/{chat}/messages/{id}/softDelete",
            post(soft_delete),
        )
}

/// `POST /users/{id}/chats/{chat}/messages/{id}/softDelete`: the message stays, with
/// `deletedDateTime` set and its body emptied (delegated `Chat.ReadWrite` as a member, or
/// application `Chat.ReadWrite.All`); `204`.
async fn soft_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, chat_id, message_id)): Path<(String, String, String)>,
) -> GraphResult {
    caller.require(Workload::Teams, &["Chat.ReadWrite", "Chat.ReadWrite.All"])?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let user_id = tenant.user_key(&user).ok_or_else(|| {
        GraphError::not_found("NotFound", format!("User '{user}' was not found."))
    })?;
    if caller.user_id.as_ref().is_some_and(|me| *me != user_id) {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "A delegated caller can only act on its own chats.",
        ));
    }
    let chat = tenant
        .chats
        .get_mut(&chat_id)
        .filter(|c| c.members.contains(&user_id))
        .ok_or_else(|| {
            GraphError::not_found("NotFound", format!("Chat '{chat_id}' was not found."))
        })?;
    let message = chat.messages.get_mut(&message_id).ok_or_else(|| {
        GraphError::not_found("NotFound", format!("Message '{message_id}' was not found."))
    })?;
    if message["deletedDateTime"].is_null() {
        message["deletedDateTime"] = json!(clock::graph(clock::now()));
        message["body"] = json!({"contentType": "html", "content": ""});
    }
    Ok(super::no_content())
}

fn bound_user(member: &Value) -> Option<String> {
    let bind = member.get("user@odata.bind")?.as_str()?;
    let inner = bind
        .rsplit("users(")
        .next()?
        .trim_end_matches(')')
        .trim_matches('\'');
    let inner = if inner == bind {
        bind.rsplit('/').next()?
    } else {
        inner
    };
    Some(inner.to_string())
}

async fn create_chat(State(state): State<AppState>, caller: Caller, body: Bytes) -> GraphResult {
    let input = json_object(&body)?;
    let migration = input
        .get("@microsoft.graph.chatCreationMode")
        .and_then(Value::as_str)
        == Some("migration");
    if migration {
        caller.require(Workload::Teams, &["Teamwork.Migrate.All"])?;
    } else {
        caller.require(
            Workload::Teams,
            &["Chat.Create", "Chat.ReadWrite", "Chat.ReadWrite.All"],
        )?;
    }
    let chat_type = input
        .get("chatType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !matches!(chat_type.as_str(), "oneOnOne" | "group") {
        return Err(GraphError::bad_request(
            "BadRequest",
            "Invalid value for chatType. Allowed values are oneOnOne and group.",
        ));
    }
    let members = input
        .get("members")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let mut member_ids = BTreeSet::new();
    for member in &members {
        let key = bound_user(member).ok_or_else(|| {
            GraphError::bad_request("BadRequest", "Each member needs user@odata.bind.")
        })?;
        let id = tenant.user_key(&key).ok_or_else(|| {
            GraphError::not_found("NotFound", format!("User '{key}' was not found."))
        })?;
        member_ids.insert(id);
    }
    if chat_type == "oneOnOne" && member_ids.len() != 2 {
        return Err(GraphError::bad_request(
            "BadRequest",
            "A oneOnOne chat must have exactly two members.",
        ));
    }
    if member_ids.len() < 2 {
        return Err(GraphError::bad_request(
            "BadRequest",
            "A group chat needs at least two members.",
        ));
    }
    if let Some(me) = &caller.user_id {
        if !member_ids.contains(me) {
            return Err(GraphError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The caller must be one of the members of the chat.",
            ));
        }
    }
    if chat_type == "oneOnOne" {
        if let Some(existing) = tenant
            .chats
            .values()
            .find(|c| c.chat["chatType"] == "oneOnOne" && c.members == member_ids)
        {
            let mut out = existing.chat.clone();
            out["@odata.context"] = json!(context(&state, "chats/$entity"));
            return Ok(created(out));
        }
    }
    let now = clock::graph(clock::now());
    let ids: Vec<&String> = member_ids.iter().collect();
    let id = if chat_type == "oneOnOne" {
        format!("19:{}_{}@unq.gbl.spaces", ids[0], ids[1])
    } else {
        format!("19:{}@thread.v2", uuid::Uuid::new_v4().simple())
    };
    let chat = json!({
        "id": id,
        "topic": if chat_type == "group" { input.get("topic").cloned().unwrap_or(Value::Null) } else { Value::Null },
        "createdDateTime": now,
        "lastUpdatedDateTime": now,
        "chatType": chat_type,
        "webUrl": format!("https://teams.microsoft.com/l/chat/{id}/0?tenantId={}", tenant.id),
        "tenantId": tenant.id,
        "isHiddenForAllMembers": false,
        "onlineMeetingInfo": null,
        "viewpoint": null,
    });
    tenant.chats.insert(
        id.clone(),
        Chat {
            chat: chat.clone(),
            members: member_ids,
            messages: BTreeMap::new(),
            migration_mode: migration,
        },
    );
    let mut out = chat;
    out["@odata.context"] = json!(context(&state, "chats/$entity"));
    Ok(created(out))
}

async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(chat_id): Path<String>,
    body: Bytes,
) -> GraphResult {
    let input = json_object(&body)?;
    let content = input
        .get("body")
        .and_then(|b| b.get("content"))
        .and_then(Value::as_str);
    if content.is_none_or(str::is_empty) {
        return Err(GraphError::bad_request(
            "BadRequest",
            "Message body cannot be empty.",
        ));
    }
    let mut world = state.world();
    let now = clock::now();
    let message_id = world.next_chat_message_id(now);
    let tenant = tenant_of(&mut world, &caller)?;
    let tenant_id = tenant.id.clone();
    let chat = tenant.chats.get(&chat_id).ok_or_else(|| {
        GraphError::not_found("NotFound", format!("Chat '{chat_id}' was not found."))
    })?;
    let from = match &caller.user_id {
        Some(me) => {
            caller.require(
                Workload::Teams,
                &["ChatMessage.Send", "Chat.ReadWrite", "Group.ReadWrite.All"],
            )?;
            if !chat.members.contains(me) {
                return Err(GraphError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "The caller is not a member of the chat.",
                ));
            }
            let user = &tenant.users[me];
            json!({"application": null, "device": null, "user": {"@odata.type": "#microsoft.graph.teamworkUserIdentity", "id": me, "displayName": user.display_name(), "userIdentityType": "aadUser", "tenantId": tenant_id}})
        }
        None => {
            if !(chat.migration_mode && caller.permissions.contains("Teamwork.Migrate.All")) {
                return Err(GraphError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Message POST is allowed in application-only context only for import purposes. Refer to https://docs.microsoft.com/microsoftteams/platform/graph-api/import-messages/import-external-messages-to-teams for more details.",
                ));
            }
            if input.get("createdDateTime").is_none() || input.get("from").is_none() {
                return Err(GraphError::bad_request(
                    "BadRequest",
                    "Imported messages need createdDateTime and from.",
                ));
            }
            input["from"].clone()
        }
    };
    let created_at = input
        .get("createdDateTime")
        .cloned()
        .unwrap_or_else(|| json!(clock::graph(now)));
    let message = json!({
        "id": message_id,
        "replyToId": null,
        "etag": message_id,
        "messageType": "message",
        "createdDateTime": created_at,
        "lastModifiedDateTime": clock::graph(now),
        "lastEditedDateTime": null,
        "deletedDateTime": null,
        "subject": input.get("subject").cloned().unwrap_or(Value::Null),
        "summary": null,
        "chatId": chat_id,
        "importance": input.get("importance").cloned().unwrap_or(json!("normal")),
        "locale": "en-us",
        "webUrl": null,
        "channelIdentity": null,
        "policyViolation": null,
        "eventDetail": null,
        "from": from,
        "body": {"contentType": input["body"].get("contentType").cloned().unwrap_or(json!("text")), "content": content},
        "attachments": [],
        "mentions": [],
        "reactions": [],
    });
    let chat = tenant.chats.get_mut(&chat_id).expect("found above");
    chat.messages.insert(message_id.clone(), message.clone());
    chat.chat["lastUpdatedDateTime"] = json!(clock::graph(now));
    let resource = format!("chats('{chat_id}')/messages('{message_id}')");
    notifications::publish(
        &state,
        &world,
        Change {
            tenant: tenant_id,
            change_type: "created",
            target: ChangeTarget::ChatMessage {
                chat_id: chat_id.clone(),
            },
            resource: resource.clone(),
            other_forms: Vec::new(),
            resource_data: json!({"id": message_id, "@odata.type": "#Microsoft.Graph.chatMessage", "@odata.id": resource}),
            content: Some(message.clone()),
        },
    );
    let mut out = message;
    out["@odata.context"] = json!(context(
        &state,
        &format!("chats('{chat_id}')/messages/$entity")
    ));
    Ok(created(out))
}

async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(chat_id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(
        Workload::Teams,
        &[
            "Chat.Read",
            "Chat.ReadWrite",
            "Chat.Read.All",
            "Chat.ReadWrite.All",
            "ChatMessage.Read",
            "ChatMessage.Read.All",
        ],
    )?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let chat = tenant.chats.get(&chat_id).ok_or_else(|| {
        GraphError::not_found("NotFound", format!("Chat '{chat_id}' was not found."))
    })?;
    if caller
        .user_id
        .as_ref()
        .is_some_and(|me| !chat.members.contains(me))
    {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The caller is not a member of the chat.",
        ));
    }
    let items: Vec<Value> = chat.messages.values().rev().cloned().collect();
    page(
        &state,
        &uri,
        &format!("chats('{chat_id}')/messages"),
        items,
        &query,
        20,
    )
}
