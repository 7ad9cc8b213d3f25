//! Calendar events: create, read, list, update, cancel, delete.
//!
//! Sources: https://learn.microsoft.com/graph/api/user-post-events (`transactionId`: a client's
//! key so a retried create does not make the event twice), .../event-update,
//! .../event-cancel (organizer only; `202 Accepted`; the event moves to Deleted Items and
//! attendees get a cancellation), .../event-delete.
//!
//! Attendees who are users of the emulated cloud with a mailbox get a copy of the event (same
//! `iCalUId`), updated and cancelled with the organizer's.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::mail::open_mailbox;
use super::{
    context, created, json_object, no_content, page, select, Caller, GraphError, GraphResult,
    Workload,
};
use crate::notifications::{self, Change, ChangeTarget};
use crate::world::{new_outlook_id, random_secret, World};
use crate::{clock, AppState};

const READ: [&str; 4] = [
    "Calendars.Read",
    "Calendars.ReadWrite",
    "Calendars.ReadBasic",
    "Calendars.Read.Shared",
];
const WRITE: [&str; 2] = ["Calendars.ReadWrite", "Calendars.ReadWrite.Shared"];

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/users/{user}/events", get(list).post(create))
        .route("/v1.0/users/{user}/calendar/events", get(list).post(create))
        .route(
            "/v1.0/users/{user}/events/{id}",
            get(read).patch(update).delete(remove),
        )
        .route(
            "/v1.0/users/{user}/calendar/events/{id}",
            get(read).patch(update).delete(remove),
        )
        .route("/v1.0/users/{user}/events/{id}/cancel", post(cancel))
}

fn not_found() -> GraphError {
    GraphError::not_found(
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn events_mut<'w>(
    world: &'w mut World,
    tenant: &str,
    user_id: &str,
) -> &'w mut BTreeMap<String, Value> {
    &mut world
        .tenants
        .get_mut(tenant)
        .and_then(|t| t.users.get_mut(user_id))
        .and_then(|u| u.mailbox.as_mut())
        .expect("mailbox opened")
        .events
}

fn event_change(tenant: &str, user_id: &str, event: &Value, change_type: &'static str) -> Change {
    let id = event["id"].as_str().unwrap_or_default();
    Change {
        tenant: tenant.to_string(),
        change_type,
        target: ChangeTarget::Event {
            user_id: user_id.to_string(),
        },
        resource: format!("users/{user_id}@{tenant}/events/{id}"),
        other_forms: vec![
            format!("Users/{user_id}/Events/{id}"),
            format!("Users('{user_id}')/events('{id}')"),
        ],
        resource_data: json!({
            "@odata.type": "#Microsoft.Graph.Event",
            "@odata.id": format!("Users/{user_id}@{tenant}/Events/{id}"),
            "@odata.etag": event["@odata.etag"],
            "id": id,
        }),
        content: Some(event.clone()),
    }
}

fn touch(event: &mut Value) {
    let change_key = random_secret(22);
    event["changeKey"] = json!(change_key);
    event["@odata.etag"] = json!(format!("W/\"{change_key}\""));
    event["lastModifiedDateTime"] = json!(clock::graph(clock::now()));
}

fn valid_time(value: Option<&Value>) -> bool {
    value
        .and_then(|v| v.get("dateTime"))
        .and_then(Value::as_str)
        .is_some_and(|t| clock::parse(t).is_some())
}

fn attendee_addresses(event: &Value) -> Vec<String> {
    event["attendees"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["emailAddress"]["address"].as_str().map(str::to_string))
        .collect()
}

/// Copies of an event in attendees' calendars: (tenant, user, event id).
fn attendee_copies(world: &World, organizer_event: &Value) -> Vec<(String, String, String)> {
    let uid = &organizer_event["iCalUId"];
    let mut copies = Vec::new();
    for (tenant_id, tenant) in &world.tenants {
        for (user_id, user) in &tenant.users {
            if let Some(mailbox) = &user.mailbox {
                for (id, event) in &mailbox.events {
                    if &event["iCalUId"] == uid && event["isOrganizer"] == json!(false) {
                        copies.push((tenant_id.clone(), user_id.clone(), id.clone()));
                    }
                }
            }
        }
    }
    copies
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let input = json_object(&body)?;
    if !valid_time(input.get("start")) || !valid_time(input.get("end")) {
        return Err(GraphError::bad_request("ErrorInvalidRequest", "Your request can't be completed. Both start and end must be given as dateTimeTimeZone values."));
    }
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    // transactionId: a retried create returns the event the first attempt made.
    let transaction = input.get("transactionId").and_then(Value::as_str);
    if let Some(transaction) = transaction {
        let existing = events_mut(&mut world, &tenant, &user_id)
            .values()
            .find(|e| e["transactionId"] == transaction)
            .cloned();
        if let Some(mut existing) = existing {
            existing["@odata.context"] = json!(context(
                &state,
                &format!("users('{user_id}')/events/$entity")
            ));
            return Ok(created(existing));
        }
    }
    let organizer = world.tenants[&tenant].users[&user_id].email_address();
    let now = clock::graph(clock::now());
    let id = new_outlook_id("AAMkAGI");
    let mut event = json!({
        "id": id,
        "createdDateTime": now,
        "categories": [],
        "iCalUId": format!("040000008200E00074C5B7101A82E008{}", random_secret(32).to_uppercase()),
        "reminderMinutesBeforeStart": 15,
        "isReminderOn": true,
        "hasAttachments": false,
        "subject": input.get("subject").cloned().unwrap_or(Value::Null),
        "bodyPreview": input.get("body").and_then(|b| b["content"].as_str()).unwrap_or_default().chars().take(255).collect::<String>(),
        "importance": "normal",
        "sensitivity": "normal",
        "isAllDay": input.get("isAllDay").cloned().unwrap_or(json!(false)),
        "isCancelled": false,
        "isOrganizer": true,
        "responseRequested": true,
        "showAs": input.get("showAs").cloned().unwrap_or(json!("busy")),
        "type": "singleInstance",
        "webLink": format!("https://outlook.office365.com/owa/?itemid={id}&exvsurl=1&path=/calendar/item"),
        "isOnlineMeeting": false,
        "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
        "body": input.get("body").cloned().unwrap_or_else(|| json!({"contentType": "html", "content": ""})),
        "start": input["start"],
        "end": input["end"],
        "location": input.get("location").cloned().unwrap_or_else(|| json!({"displayName": ""})),
        "locations": [],
        "attendees": input.get("attendees").cloned().unwrap_or_else(|| json!([])),
        "organizer": organizer,
    });
    if let Some(transaction) = transaction {
        // Returned only when the app set it.
        event["transactionId"] = json!(transaction);
    }
    touch(&mut event);
    events_mut(&mut world, &tenant, &user_id).insert(id.clone(), event.clone());
    let mut changes = vec![event_change(&tenant, &user_id, &event, "created")];
    let now_t = clock::now();
    for address in attendee_addresses(&event) {
        let found = world
            .tenants
            .iter()
            .find_map(|(tid, t)| t.user_by_address(&address).map(|u| (tid.clone(), u)));
        let Some((attendee_tenant, attendee_id)) = found else {
            continue;
        };
        let attendee = world
            .tenants
            .get_mut(&attendee_tenant)
            .and_then(|t| t.users.get_mut(&attendee_id))
            .expect("found");
        if attendee_id == user_id || !attendee.services_ready(now_t) {
            continue;
        }
        let mut copy = event.clone();
        let copy_id = new_outlook_id("AAMkAGI");
        copy["id"] = json!(copy_id);
        copy["isOrganizer"] = json!(false);
        copy["responseStatus"] =
            json!({"response": "notResponded", "time": "0001-01-01T00:00:00Z"});
        attendee
            .mailbox
            .as_mut()
            .expect("ready")
            .events
            .insert(copy_id, copy.clone());
        changes.push(event_change(
            &attendee_tenant,
            &attendee_id,
            &copy,
            "created",
        ));
    }
    for change in changes {
        notifications::publish(&state, &world, change);
    }
    event["@odata.context"] = json!(context(
        &state,
        &format!("users('{user_id}')/events/$entity")
    ));
    Ok(created(event))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Path(user): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(Workload::Outlook, &READ)?;
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let items: Vec<Value> = events_mut(&mut world, &tenant, &user_id)
        .values()
        .cloned()
        .collect();
    page(
        &state,
        &uri,
        &format!("users('{user_id}')/events"),
        items,
        &query,
        10,
    )
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(Workload::Outlook, &READ)?;
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let event = events_mut(&mut world, &tenant, &user_id)
        .get(&id)
        .ok_or_else(not_found)?;
    let mut out = select(event, &query);
    out["@odata.context"] = json!(context(
        &state,
        &format!("users('{user_id}')/events/$entity")
    ));
    Ok(Json(out).into_response())
}

const UPDATABLE: [&str; 11] = [
    "subject",
    "body",
    "start",
    "end",
    "location",
    "attendees",
    "categories",
    "importance",
    "isAllDay",
    "showAs",
    "isReminderOn",
];

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let input: Map<String, Value> = json_object(&body)?;
    if let Some(key) = input.keys().find(|k| !UPDATABLE.contains(&k.as_str())) {
        return Err(GraphError::bad_request(
            "ErrorInvalidPropertyRequest",
            format!("The property '{key}' can't be updated."),
        ));
    }
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let event = events_mut(&mut world, &tenant, &user_id)
        .get_mut(&id)
        .ok_or_else(not_found)?;
    for (key, value) in &input {
        event[key.as_str()] = value.clone();
    }
    touch(event);
    let out = event.clone();
    let mut changes = vec![event_change(&tenant, &user_id, &out, "updated")];
    if out["isOrganizer"] == json!(true) {
        for (t, u, copy_id) in attendee_copies(&world, &out) {
            let copy = events_mut(&mut world, &t, &u)
                .get_mut(&copy_id)
                .expect("listed");
            for (key, value) in &input {
                copy[key.as_str()] = value.clone();
            }
            touch(copy);
            changes.push(event_change(&t, &u, copy, "updated"));
        }
    }
    for change in changes {
        notifications::publish(&state, &world, change);
    }
    Ok(Json(out).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    if !body.is_empty() {
        json_object(&body)?;
    }
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let event = events_mut(&mut world, &tenant, &user_id)
        .get(&id)
        .ok_or_else(not_found)?
        .clone();
    if event["isOrganizer"] != json!(true) {
        return Err(GraphError::bad_request(
            "ErrorAccessDenied",
            "Your request can't be completed. You need to be an organizer to cancel a meeting.",
        ));
    }
    events_mut(&mut world, &tenant, &user_id).remove(&id);
    let mut changes = vec![event_change(&tenant, &user_id, &event, "deleted")];
    for (t, u, copy_id) in attendee_copies(&world, &event) {
        let copy = events_mut(&mut world, &t, &u)
            .get_mut(&copy_id)
            .expect("listed");
        copy["isCancelled"] = json!(true);
        let subject = copy["subject"].as_str().unwrap_or_default().to_string();
        copy["subject"] = json!(format!("Canceled: {subject}"));
        touch(copy);
        changes.push(event_change(&t, &u, copy, "updated"));
    }
    for change in changes {
        notifications::publish(&state, &world, change);
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> GraphResult {
    caller.require(Workload::Outlook, &WRITE)?;
    let mut world = state.world();
    let (tenant, user_id) = open_mailbox(&mut world, &caller, &user)?;
    let event = events_mut(&mut world, &tenant, &user_id)
        .remove(&id)
        .ok_or_else(not_found)?;
    notifications::publish(
        &state,
        &world,
        event_change(&tenant, &user_id, &event, "deleted"),
    );
    Ok(no_content())
}
