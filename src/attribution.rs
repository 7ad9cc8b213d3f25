//! Delegated actions and the attribution lookback (seed 003): mail and events tenantd sent or
//! created as a signed-in user are remembered; an inbound message that replies to one of them
//! (same `conversationId`, or `In-Reply-To` naming its internetMessageId) within the tenant's
//! lookback window (30, 60 or 90 days; 90 unless set) is linked to it. Records older than the
//! window are pruned, their links with them.
//!
//! Owns `delegated_actions`, `attribution_links` and `attribution_settings`. Invariants: an
//! action with a request id exists once per tenant and kind (a retried job finds its prepared
//! action instead of making another); only finished (`done`) actions are linked; a message is
//! linked at most once, never to itself; a link never outlives its action.

use serde::Serialize;

use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};

/// The lookback when a tenant set none.
pub const DEFAULT_LOOKBACK_DAYS: i64 = 90;
/// The windows a tenant may choose.
pub const LOOKBACK_CHOICES: [i64; 3] = [30, 60, 90];
const DAY: i64 = 86_400;

/// Why an attribution operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not one of the allowed windows.
    #[error("a lookback of {0} days is not offered; fix: use 30, 60 or 90")]
    InvalidLookback(i64),
}

impl From<sqlx::Error> for AttributionError {
    fn from(err: sqlx::Error) -> Self {
        AttributionError::Store(StoreError::from(err))
    }
}

impl AttributionError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            AttributionError::Store(err) => err.reason_code(),
            AttributionError::InvalidLookback(_) => "invalid_lookback",
        }
    }
}

/// A remembered action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// Row id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The delegated connection it acted through.
    pub connection_id: String,
    /// The signed-in user (Graph object id).
    pub user_id: String,
    /// `mail` or `event`.
    pub kind: String,
    /// The caller's idempotency key, if given.
    pub request_id: Option<String>,
    /// `prepared` (created at Graph, not yet sent) or `done`.
    pub state: String,
    /// Graph's id of the message or event.
    pub graph_id: String,
    /// The message's internetMessageId.
    pub internet_message_id: Option<String>,
    /// The message's conversationId.
    pub conversation_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Done (Unix seconds).
    pub done_at: Option<i64>,
}

type ActionRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

fn action(row: ActionRow) -> Action {
    let (
        id,
        tenant_id,
        connection_id,
        user_id,
        kind,
        request_id,
        state,
        graph_id,
        internet_message_id,
        conversation_id,
        subject,
        created_at,
        done_at,
    ) = row;
    Action {
        id,
        tenant_id,
        connection_id,
        user_id,
        kind,
        request_id,
        state,
        graph_id,
        internet_message_id,
        conversation_id,
        subject,
        created_at,
        done_at,
    }
}

macro_rules! select_actions {
    ($tail:literal) => {
        concat!(
            "SELECT id, tenant_id, connection_id, user_id, kind, request_id, state, graph_id, internet_message_id, ",
            "conversation_id, subject, created_at, done_at FROM delegated_actions ",
            $tail
        )
    };
}

/// An action about to be remembered.
#[derive(Debug, Clone)]
pub struct NewAction<'a> {
    /// Tenant.
    pub tenant_id: &'a str,
    /// Delegated connection.
    pub connection_id: &'a str,
    /// Signed-in user.
    pub user_id: &'a str,
    /// `mail` or `event`.
    pub kind: &'a str,
    /// Idempotency key.
    pub request_id: Option<&'a str>,
    /// Graph's id.
    pub graph_id: &'a str,
    /// internetMessageId.
    pub internet_message_id: Option<&'a str>,
    /// conversationId.
    pub conversation_id: Option<&'a str>,
    /// Subject.
    pub subject: Option<&'a str>,
    /// Already finished (an event is done once created; mail once sent).
    pub done: bool,
}

/// Remembers an action; returns it.
///
/// # Errors
/// The database failed.
pub async fn remember(store: &Store, new: &NewAction<'_>) -> Result<Action, AttributionError> {
    const SQL: &str = "INSERT INTO delegated_actions (id, tenant_id, connection_id, user_id, kind, request_id, state, graph_id, \
         internet_message_id, conversation_id, subject, created_at, done_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
    let id = uuid::Uuid::now_v7().simple().to_string();
    let now = now_unix();
    write_tx!(store, |pool| sqlx::query(SQL)
        .bind(&id)
        .bind(new.tenant_id)
        .bind(new.connection_id)
        .bind(new.user_id)
        .bind(new.kind)
        .bind(new.request_id)
        .bind(if new.done { "done" } else { "prepared" })
        .bind(new.graph_id)
        .bind(new.internet_message_id)
        .bind(new.conversation_id)
        .bind(new.subject)
        .bind(now)
        .bind(new.done.then_some(now))
        .execute(pool)
        .await?
        .rows_affected());
    Ok(get(store, &id).await?.expect("just inserted"))
}

async fn get(store: &Store, id: &str) -> Result<Option<Action>, AttributionError> {
    const SQL: &str = select_actions!("WHERE id = $1");
    let row: Option<ActionRow> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_optional(pool)
        .await?);
    Ok(row.map(action))
}

/// The action a request id made, if any.
///
/// # Errors
/// The database failed.
pub async fn by_request(
    store: &Store,
    tenant_id: &str,
    kind: &str,
    request_id: &str,
) -> Result<Option<Action>, AttributionError> {
    const SQL: &str = select_actions!("WHERE tenant_id = $1 AND kind = $2 AND request_id = $3");
    let row: Option<ActionRow> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(tenant_id)
        .bind(kind)
        .bind(request_id)
        .fetch_optional(pool)
        .await?);
    Ok(row.map(action))
}

/// Marks a prepared action done.
///
/// # Errors
/// The database failed.
pub async fn mark_done(store: &Store, id: &str) -> Result<(), AttributionError> {
    write_tx!(store, |pool| sqlx::query(
        "UPDATE delegated_actions SET state = 'done', done_at = $1 WHERE id = $2"
    )
    .bind(now_unix())
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(())
}

/// An inbound message as the lookback reads it.
#[derive(Debug, Clone, Default)]
pub struct Inbound<'a> {
    /// Graph message id.
    pub message_id: &'a str,
    /// Its internetMessageId.
    pub internet_message_id: Option<&'a str>,
    /// Its conversationId.
    pub conversation_id: Option<&'a str>,
    /// Its `In-Reply-To` header.
    pub in_reply_to: Option<&'a str>,
    /// Sender address.
    pub from_address: Option<&'a str>,
    /// `receivedDateTime` (RFC 3339); now when absent or unreadable.
    pub received_at: Option<&'a str>,
}

/// A link from an inbound reply to the action it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The reply's Graph id.
    pub message_id: String,
    /// The action.
    pub action_id: String,
    /// `in_reply_to` or `conversation`.
    pub matched_by: String,
}

fn unix_of(rfc3339: Option<&str>) -> i64 {
    rfc3339
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(now_unix, |t| t.timestamp())
}

/// Links `message` to the action it replies to within the tenant's window, if any; a message
/// linked before keeps its link.
///
/// # Errors
/// The database failed.
pub async fn link_reply(
    store: &Store,
    tenant_id: &str,
    message: &Inbound<'_>,
) -> Result<Option<Link>, AttributionError> {
    const BY_MESSAGE_ID: &str = select_actions!(
        "WHERE tenant_id = $1 AND state = 'done' AND created_at >= $2 AND created_at <= $3 AND internet_message_id = $4 \
         ORDER BY created_at DESC LIMIT 1"
    );
    const BY_CONVERSATION: &str = select_actions!(
        "WHERE tenant_id = $1 AND state = 'done' AND created_at >= $2 AND created_at <= $3 AND conversation_id = $4 \
         ORDER BY created_at DESC LIMIT 1"
    );
    let received = unix_of(message.received_at);
    let since = received - lookback(store, tenant_id).await? * DAY;
    // A clock a little ahead at Graph must not hide the reply to a message sent just now.
    let until = received + 300;
    let mut found = None;
    for (sql, value, matched_by) in [
        (BY_MESSAGE_ID, message.in_reply_to, "in_reply_to"),
        (BY_CONVERSATION, message.conversation_id, "conversation"),
    ] {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        let row: Option<ActionRow> = with_pool!(store, |pool| sqlx::query_as(sql)
            .bind(tenant_id)
            .bind(since)
            .bind(until)
            .bind(value)
            .fetch_optional(pool)
            .await?);
        let candidate = row.map(action).filter(|a| {
            // The sent message itself (its copy in Sent Items) is no reply.
            a.internet_message_id.is_none()
                || a.internet_message_id.as_deref() != message.internet_message_id
        });
        if let Some(candidate) = candidate {
            found = Some((candidate, matched_by));
            break;
        }
    }
    let Some((action, matched_by)) = found else {
        return Ok(None);
    };
    const INSERT: &str = "INSERT INTO attribution_links (tenant_id, message_id, action_id, matched_by, from_address, received_at, linked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, message_id) DO NOTHING";
    write_tx!(store, |pool| sqlx::query(INSERT)
        .bind(tenant_id)
        .bind(message.message_id)
        .bind(&action.id)
        .bind(matched_by)
        .bind(message.from_address)
        .bind(message.received_at)
        .bind(now_unix())
        .execute(pool)
        .await?
        .rows_affected());
    Ok(Some(Link {
        message_id: message.message_id.to_string(),
        action_id: action.id,
        matched_by: matched_by.to_string(),
    }))
}

/// One remembered action with the replies linked to it (`tenantd attribution list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attributed {
    /// The action.
    pub action: Action,
    /// Replies: (message id, matched by, from, received).
    pub replies: Vec<Reply>,
}

/// A linked reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Graph message id.
    pub message_id: String,
    /// `in_reply_to` or `conversation`.
    pub matched_by: String,
    /// Sender.
    pub from_address: Option<String>,
    /// receivedDateTime.
    pub received_at: Option<String>,
}

/// A tenant's remembered actions, newest first, each with its linked replies.
///
/// # Errors
/// The database failed.
pub async fn list(store: &Store, tenant_id: &str) -> Result<Vec<Attributed>, AttributionError> {
    const ACTIONS: &str = select_actions!("WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC");
    const LINKS: &str = "SELECT action_id, message_id, matched_by, from_address, received_at FROM attribution_links \
         WHERE tenant_id = $1 ORDER BY linked_at, message_id";
    let rows: Vec<ActionRow> = with_pool!(store, |pool| sqlx::query_as(ACTIONS)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?);
    type LinkRow = (String, String, String, Option<String>, Option<String>);
    let links: Vec<LinkRow> = with_pool!(store, |pool| sqlx::query_as(LINKS)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?);
    Ok(rows
        .into_iter()
        .map(action)
        .map(|action| {
            let replies = links
                .iter()
                .filter(|l| l.0 == action.id)
                .map(
                    |(_, message_id, matched_by, from_address, received_at)| Reply {
                        message_id: message_id.clone(),
                        matched_by: matched_by.clone(),
                        from_address: from_address.clone(),
                        received_at: received_at.clone(),
                    },
                )
                .collect();
            Attributed { action, replies }
        })
        .collect())
}

/// A tenant's lookback in days.
///
/// # Errors
/// The database failed.
pub async fn lookback(store: &Store, tenant_id: &str) -> Result<i64, AttributionError> {
    let days: Option<i64> = with_pool!(store, |pool| sqlx::query_scalar(
        "SELECT lookback_days FROM attribution_settings WHERE tenant_id = $1"
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?);
    Ok(days.unwrap_or(DEFAULT_LOOKBACK_DAYS))
}

/// Sets a tenant's lookback (30, 60 or 90 days).
///
/// # Errors
/// [`AttributionError::InvalidLookback`], or the database failed.
pub async fn set_lookback(
    store: &Store,
    tenant_id: &str,
    days: i64,
) -> Result<(), AttributionError> {
    if !LOOKBACK_CHOICES.contains(&days) {
        return Err(AttributionError::InvalidLookback(days));
    }
    const SQL: &str = "INSERT INTO attribution_settings (tenant_id, lookback_days, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET lookback_days = excluded.lookback_days, updated_at = excluded.updated_at";
    write_tx!(store, |pool| sqlx::query(SQL)
        .bind(tenant_id)
        .bind(days)
        .bind(now_unix())
        .execute(pool)
        .await?
        .rows_affected());
    Ok(())
}

/// Deletes actions older than their tenant's window (their links go with them); returns how
/// many.
///
/// # Errors
/// The database failed.
pub async fn prune(store: &Store, now: i64) -> Result<u64, AttributionError> {
    const SQL: &str = "DELETE FROM delegated_actions WHERE created_at < $1 - 86400 * COALESCE(\
         (SELECT s.lookback_days FROM attribution_settings s WHERE s.tenant_id = delegated_actions.tenant_id), 90)";
    Ok(write_tx!(store, |pool| sqlx::query(SQL)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
}
