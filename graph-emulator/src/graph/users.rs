//! Users, licenses and subscribed SKUs.
//!
//! Sources: https://learn.microsoft.com/graph/api/user-post-users (required properties),
//! .../user-list (`$filter`, `$select`, `$top`), .../user-assignlicense (both arrays required;
//! a usage location is required for licensing), .../subscribedsku-list.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use time::Duration;

use super::{
    context, created, json_object, no_content, page, resolve_user, select, tenant_of, Caller,
    GraphError, GraphResult, Workload,
};
use crate::notifications::{self, Change, ChangeTarget};
use crate::world::{guid, Tenant, User};
use crate::{clock, AppState};

const READ: [&str; 6] = [
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "User.Read",
];
const WRITE: [&str; 2] = ["User.ReadWrite.All", "Directory.ReadWrite.All"];

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1.0/users", get(list).post(create))
        .route("/v1.0/users/{user}", get(read).patch(update).delete(remove))
        .route("/v1.0/users/{user}/assignLicense", post(assign_license))
        .route("/v1.0/subscribedSkus", get(subscribed_skus))
}

const DEFAULT_PROPERTIES: [&str; 11] = [
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// The user as Graph renders it: the default property set, or everything when `$select` asks.
pub fn render(user: &User, query: &BTreeMap<String, String>) -> Value {
    let mut full = Map::new();
    for key in DEFAULT_PROPERTIES {
        full.insert(key.into(), Value::Null);
    }
    full.insert("businessPhones".into(), json!([]));
    for key in [
        "accountEnabled",
        "mailNickname",
        "usageLocation",
        "otherMails",
        "department",
    ] {
        full.insert(key.into(), Value::Null);
    }
    for (key, value) in &user.properties {
        full.insert(key.clone(), value.clone());
    }
    full.insert("id".into(), json!(user.id));
    full.insert("userPrincipalName".into(), json!(user.upn));
    full.insert(
        "assignedLicenses".into(),
        Value::Array(
            user.licenses
                .iter()
                .map(|sku| json!({"disabledPlans": [], "skuId": sku}))
                .collect(),
        ),
    );
    full.remove("passwordProfile");
    let full = Value::Object(full);
    if query.contains_key("$select") {
        select(&full, query)
    } else {
        let Value::Object(map) = full else {
            unreachable!()
        };
        Value::Object(
            map.into_iter()
                .filter(|(k, _)| DEFAULT_PROPERTIES.contains(&k.as_str()))
                .collect(),
        )
    }
}

/// The filters Graph supports on the properties tenantd looks users up by.
fn matches_filter(user: &User, filter: &str) -> Result<bool, GraphError> {
    let filter = filter.trim();
    let unsupported = || {
        GraphError::bad_request(
            "Request_UnsupportedQuery",
            format!("Unsupported or invalid query filter clause specified for property '{filter}' of resource 'User'."),
        )
    };
    let value_of = |property: &str| -> String {
        match property.to_ascii_lowercase().as_str() {
            "userprincipalname" => user.upn.clone(),
            "mail" => user
                .properties
                .get("mail")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            "displayname" => user.display_name(),
            _ => String::new(),
        }
    };
    let literal = |text: &str| -> Option<String> {
        let text = text.trim();
        text.strip_prefix('\'')?
            .strip_suffix('\'')
            .map(|s| s.replace("''", "'"))
    };
    if let Some(args) = filter
        .strip_prefix("startswith(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        let (property, value) = args.split_once(',').ok_or_else(unsupported)?;
        let value = literal(value).ok_or_else(unsupported)?;
        if !is_filterable(property.trim()) {
            return Err(unsupported());
        }
        return Ok(value_of(property.trim())
            .to_ascii_lowercase()
            .starts_with(&value.to_ascii_lowercase()));
    }
    let mut parts = filter.splitn(3, ' ');
    let (property, op, value) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !op.eq_ignore_ascii_case("eq") || !is_filterable(property) {
        return Err(unsupported());
    }
    let value = literal(value).ok_or_else(unsupported)?;
    Ok(value_of(property).eq_ignore_ascii_case(&value))
}

fn is_filterable(property: &str) -> bool {
    ["userPrincipalName", "mail", "displayName"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(property))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(Workload::Directory, &READ[..5])?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let mut users = Vec::new();
    for user in tenant.users.values() {
        let keep = match query.get("$filter") {
            Some(filter) => matches_filter(user, filter)?,
            None => true,
        };
        if keep {
            let mut all = query.clone();
            all.insert(
                "$select".into(),
                all.get("$select")
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_PROPERTIES.join(",")),
            );
            users.push(render(user, &all));
        }
    }
    page(&state, &uri, "users", users, &query, 100)
}

fn required_string<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, GraphError> {
    body.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid_property(key))
}

fn invalid_property(key: &str) -> GraphError {
    GraphError::bad_request(
        "Request_BadRequest",
        format!("Invalid value specified for property '{key}' of resource 'User'."),
    )
}

/// Characters Entra allows in the alias of a userPrincipalName.
fn valid_upn(upn: &str, tenant: &Tenant) -> bool {
    let Some((alias, domain)) = upn.split_once('@') else {
        return false;
    };
    !alias.is_empty()
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "'.-_!#^~".contains(c))
        && tenant
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
}

async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let body = json_object(&body)?;
    if !body.get("accountEnabled").is_some_and(Value::is_boolean) {
        return Err(invalid_property("accountEnabled"));
    }
    required_string(&body, "displayName")?;
    required_string(&body, "mailNickname")?;
    let upn = required_string(&body, "userPrincipalName")?.to_string();
    let password_ok = body
        .get("passwordProfile")
        .and_then(|p| p.get("password"))
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if !password_ok {
        return Err(invalid_property("passwordProfile"));
    }
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    if !valid_upn(&upn, tenant) {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "Property userPrincipalName is invalid. The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.",
        ));
    }
    if tenant.user_key(&upn).is_some() {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "Another object with the same value for property userPrincipalName already exists.",
        ));
    }
    let id = guid();
    let mut properties = body.clone();
    properties.remove("userPrincipalName");
    properties.remove("id");
    let user = User {
        id: id.clone(),
        upn,
        properties,
        licenses: Vec::new(),
        services_ready_at: None,
        mailbox: None,
        drive: None,
    };
    let mut rendered = render(&user, &BTreeMap::new());
    rendered["@odata.context"] = json!(context(&state, "users/$entity"));
    tenant.users.insert(id.clone(), user);
    let tenant_id = tenant.id.clone();
    notifications::publish(&state, &world, user_change(&tenant_id, &id));
    Ok(created(rendered))
}

fn user_change(tenant: &str, id: &str) -> Change {
    // Users report creation, update and soft delete as `updated` (subscription resource docs).
    Change {
        tenant: tenant.to_string(),
        change_type: "updated",
        target: ChangeTarget::User,
        resource: format!("Users/{id}"),
        other_forms: vec![format!("users/{id}")],
        resource_data: json!({
            "@odata.type": "#Microsoft.Graph.User",
            "@odata.id": format!("Users/{id}"),
            "id": id,
            "organizationId": tenant,
        }),
        content: None,
    }
}

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let id = resolve_user(tenant, &caller, &user, Workload::Directory)?;
    if caller.user_id.as_deref() != Some(id.as_str()) {
        caller.require(Workload::Directory, &READ[..5])?;
    }
    let mut rendered = render(&tenant.users[&id], &query);
    rendered["@odata.context"] = json!(context(&state, "users/$entity"));
    Ok(Json(rendered).into_response())
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let body = json_object(&body)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let id = resolve_user(tenant, &caller, &user, Workload::Directory)?;
    if body.contains_key("id") {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "Property 'id' is read-only and cannot be set.",
        ));
    }
    let user = tenant.users.get_mut(&id).expect("resolved");
    for (key, value) in body {
        if key == "userPrincipalName" {
            if let Some(upn) = value.as_str() {
                user.upn = upn.to_string();
            }
        } else {
            user.properties.insert(key, value);
        }
    }
    let tenant_id = tenant.id.clone();
    notifications::publish(&state, &world, user_change(&tenant_id, &id));
    Ok(no_content())
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> GraphResult {
    caller.require(Workload::Directory, &WRITE)?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let id = resolve_user(tenant, &caller, &user, Workload::Directory)?;
    tenant.users.remove(&id);
    let tenant_id = tenant.id.clone();
    notifications::publish(&state, &world, user_change(&tenant_id, &id));
    Ok(no_content())
}

fn sku_json(tenant: &Tenant, sku: &crate::world::Sku) -> Value {
    json!({
        "accountName": tenant.display_name,
        "accountId": tenant.id,
        "appliesTo": "User",
        "capabilityStatus": "Enabled",
        "consumedUnits": tenant.consumed(&sku.sku_id),
        "id": format!("{}_{}", tenant.id, sku.sku_id),
        "skuId": sku.sku_id,
        "skuPartNumber": sku.part_number,
        "subscriptionIds": [],
        "prepaidUnits": {"enabled": sku.seats, "suspended": 0, "warning": 0, "lockedOut": 0},
        "servicePlans": if sku.includes_mailbox {
            json!([
                {"servicePlanId": "efb87545-963c-4e0d-99df-69c6916d9eb0", "servicePlanName": "EXCHANGE_S_ENTERPRISE", "provisioningStatus": "Success", "appliesTo": "User"},
                {"servicePlanId": "5dbe027f-2339-4123-9542-606e4d348a72", "servicePlanName": "SHAREPOINTENTERPRISE", "provisioningStatus": "Success", "appliesTo": "User"},
                {"servicePlanId": "57ff2da0-773e-42df-b2af-ffb7a2317929", "servicePlanName": "TEAMS1", "provisioningStatus": "Success", "appliesTo": "User"}
            ])
        } else {
            json!([])
        },
    })
}

async fn subscribed_skus(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> GraphResult {
    caller.require(
        Workload::Directory,
        &[
            "Organization.Read.All",
            "Organization.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
            "LicenseAssignment.Read.All",
            "User.Read",
        ],
    )?;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let skus: Vec<Value> = tenant
        .skus
        .iter()
        .map(|sku| sku_json(tenant, sku))
        .collect();
    page(&state, &uri, "subscribedSkus", skus, &query, 999)
}

async fn assign_license(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> GraphResult {
    caller.require(
        Workload::Directory,
        &[
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
            "LicenseAssignment.ReadWrite.All",
        ],
    )?;
    let body = json_object(&body)?;
    let (Some(add), Some(remove)) = (
        body.get("addLicenses").and_then(Value::as_array),
        body.get("removeLicenses").and_then(Value::as_array),
    ) else {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "Invalid value specified for property 'addLicenses' or 'removeLicenses'. Both are required; send [] for none.",
        ));
    };
    let provisioning_delay = state.settings().provisioning_delay_seconds;
    let mut world = state.world();
    let tenant = tenant_of(&mut world, &caller)?;
    let id = resolve_user(tenant, &caller, &user, Workload::Directory)?;
    let mut adding = Vec::new();
    for item in add {
        let sku_id = item
            .get("skuId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(sku) = tenant
            .skus
            .iter()
            .find(|s| s.sku_id.eq_ignore_ascii_case(sku_id))
        else {
            return Err(GraphError::bad_request(
                "Request_BadRequest",
                format!("License {sku_id} does not correspond to a valid company License."),
            ));
        };
        adding.push(sku.clone());
    }
    let has_location = tenant.users[&id]
        .properties
        .get("usageLocation")
        .and_then(Value::as_str)
        .is_some_and(|l| l.len() == 2);
    if !adding.is_empty() && !has_location {
        return Err(GraphError::bad_request(
            "Request_BadRequest",
            "License assignment cannot be done for user with invalid usage location.",
        ));
    }
    for sku in &adding {
        let already = tenant.users[&id].licenses.contains(&sku.sku_id);
        if !already && tenant.consumed(&sku.sku_id) >= sku.seats {
            return Err(GraphError::bad_request(
                "Request_BadRequest",
                format!(
                    "Subscription with SKU {} does not have any available licenses.",
                    sku.sku_id
                ),
            ));
        }
    }
    let now = clock::now();
    let user = tenant.users.get_mut(&id).expect("resolved");
    for removed in remove.iter().filter_map(Value::as_str) {
        user.licenses
            .retain(|sku| !sku.eq_ignore_ascii_case(removed));
    }
    for sku in adding {
        if !user.licenses.contains(&sku.sku_id) {
            user.licenses.push(sku.sku_id.clone());
        }
        if sku.includes_mailbox && user.services_ready_at.is_none() {
            // Exchange and OneDrive provision asynchronously after licensing.
            user.services_ready_at =
                Some(now + Duration::seconds(i64::try_from(provisioning_delay).unwrap_or(0)));
            if !user.properties.get("mail").is_some_and(Value::is_string) {
                let upn = user.upn.clone();
                user.properties.insert("mail".into(), json!(upn));
            }
        }
    }
    let mut rendered = render(user, &BTreeMap::new());
    rendered["@odata.context"] = json!(context(&state, "users/$entity"));
    Ok(Json(rendered).into_response())
}
