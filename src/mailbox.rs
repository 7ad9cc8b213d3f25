//! Mail tenantd learned about through change notifications: one row per message with the
//! fields operators and the attribution lookback need (folder, subject, sender, received time,
//! internetMessageId, conversation, preview), written idempotently; deletes are marked.
//!
//! Owns `messages`. Invariants: a message is one row per (tenant, Graph message id) however
//! often its notification is processed; a later fetch overwrites an earlier one; a deleted
//! message stays marked deleted until Graph shows it again.

use serde_json::Value;

use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};

/// A message as Graph returned it, reduced to what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Graph message id.
    pub message_id: String,
    /// Mailbox owner (Graph user id).
    pub user_id: String,
    /// tenantd's subscription id that reported it.
    pub subscription_id: String,
    /// `parentFolderId`.
    pub folder_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// `from.emailAddress.address`.
    pub from_address: Option<String>,
    /// `receivedDateTime` as Graph wrote it.
    pub received_at: Option<String>,
    /// `internetMessageId`.
    pub internet_message_id: Option<String>,
    /// `conversationId`.
    pub conversation_id: Option<String>,
    /// `bodyPreview`.
    pub preview: Option<String>,
    /// The `In-Reply-To` header (read for the attribution lookback, not stored here).
    pub in_reply_to: Option<String>,
}

/// The fields Graph is asked for.
pub const SELECT: &str = "id,subject,from,receivedDateTime,internetMessageId,conversationId,bodyPreview,parentFolderId,internetMessageHeaders";

impl StoredMessage {
    /// From Graph's message JSON.
    pub fn from_graph(message: &Value, user_id: &str, subscription_id: &str) -> Option<Self> {
        let text = |key: &str| message[key].as_str().map(str::to_string);
        Some(Self {
            message_id: text("id")?,
            user_id: user_id.to_string(),
            subscription_id: subscription_id.to_string(),
            folder_id: text("parentFolderId"),
            subject: text("subject"),
            from_address: message["from"]["emailAddress"]["address"]
                .as_str()
                .map(str::to_string),
            received_at: text("receivedDateTime"),
            internet_message_id: text("internetMessageId"),
            conversation_id: text("conversationId"),
            preview: text("bodyPreview"),
            in_reply_to: message["internetMessageHeaders"]
                .as_array()
                .and_then(|headers| {
                    headers.iter().find(|h| {
                        h["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case("In-Reply-To"))
                    })
                })
                .and_then(|h| h["value"].as_str())
                .map(str::to_string),
        })
    }
}

/// Inserts or refreshes a message.
///
/// # Errors
/// The database failed.
pub async fn upsert(
    store: &Store,
    tenant_id: &str,
    message: &StoredMessage,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO messages (tenant_id, message_id, user_id, subscription_id, folder_id, subject, from_address, \
         received_at, internet_message_id, conversation_id, preview, deleted, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12) \
         ON CONFLICT (tenant_id, message_id) DO UPDATE SET user_id = excluded.user_id, subscription_id = excluded.subscription_id, \
         folder_id = excluded.folder_id, subject = excluded.subject, from_address = excluded.from_address, \
         received_at = excluded.received_at, internet_message_id = excluded.internet_message_id, \
         conversation_id = excluded.conversation_id, preview = excluded.preview, deleted = 0, updated_at = excluded.updated_at";
    write_tx!(store, |conn| sqlx::query(SQL)
        .bind(tenant_id)
        .bind(&message.message_id)
        .bind(&message.user_id)
        .bind(&message.subscription_id)
        .bind(message.folder_id.as_deref())
        .bind(message.subject.as_deref())
        .bind(message.from_address.as_deref())
        .bind(message.received_at.as_deref())
        .bind(message.internet_message_id.as_deref())
        .bind(message.conversation_id.as_deref())
        .bind(message.preview.as_deref())
        .bind(now_unix())
        .execute(conn)
        .await?
        .rows_affected());
    Ok(())
}

/// How many messages are stored (deleted ones not counted).
///
/// # Errors
/// The database failed.
pub async fn count_stored(store: &Store) -> Result<i64, StoreError> {
    const SQL: &str = "SELECT COUNT(*) FROM messages WHERE deleted = 0";
    let (count,): (i64,) = with_pool!(store, |pool| sqlx::query_as(SQL).fetch_one(pool).await?);
    Ok(count)
}

/// The newest `receivedDateTime` stored for a subscription's mail: where a resync starts.
///
/// # Errors
/// The database failed.
pub async fn newest_received(
    store: &Store,
    tenant_id: &str,
    subscription_id: &str,
) -> Result<Option<String>, StoreError> {
    // Graph writes every receivedDateTime as UTC with `Z`, so text order is time order.
    const SQL: &str =
        "SELECT MAX(received_at) FROM messages WHERE tenant_id = $1 AND subscription_id = $2";
    let newest: (Option<String>,) = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(tenant_id)
        .bind(subscription_id)
        .fetch_one(pool)
        .await?);
    Ok(newest.0)
}

/// Marks a message deleted (kept, so the history stays); a row is made if none exists.
///
/// # Errors
/// The database failed.
pub async fn mark_deleted(
    store: &Store,
    tenant_id: &str,
    message_id: &str,
    user_id: &str,
    subscription_id: &str,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO messages (tenant_id, message_id, user_id, subscription_id, deleted, updated_at) \
         VALUES ($1, $2, $3, $4, 1, $5) \
         ON CONFLICT (tenant_id, message_id) DO UPDATE SET deleted = 1, updated_at = excluded.updated_at";
    write_tx!(store, |conn| sqlx::query(SQL)
        .bind(tenant_id)
        .bind(message_id)
        .bind(user_id)
        .bind(subscription_id)
        .bind(now_unix())
        .execute(conn)
        .await?
        .rows_affected());
    Ok(())
}
