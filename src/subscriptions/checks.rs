//! The webhook's view of the subscriptions: what a notification for a Graph subscription id is
//! checked against (tenant, clientState, and for rich notifications the decryption key and the
//! tenant's app ids), read from `subscriptions` and kept briefly in a cache.
//!
//! Owns no table (reads `subscriptions`, which its parent owns). Invariants: a check never
//! shows its clientState (Debug redacts it); ids the table does not have are never cached.

use std::collections::HashMap;

use zeroize::Zeroizing;

use super::{client_state_slot, encryption_key_slot, SubscriptionError};
use crate::store::{with_pool, Store, StoreError};
use crate::vault::Keyring;

/// What a notification for one Graph subscription id is checked against.
pub struct Check {
    /// tenantd's subscription id.
    pub id: String,
    /// The tenant the subscription belongs to.
    pub tenant_id: String,
    /// The clientState Graph echoes.
    pub client_state: Zeroizing<String>,
    /// For a subscription with resource data: its decryption key and the app ids its
    /// validation tokens may be issued for.
    pub rich: Option<RichCheck>,
}

/// What a rich notification is checked and opened with.
pub struct RichCheck {
    /// The subscription's certificate key.
    pub key: crate::rich_notifications::DecryptionKey,
    /// The tenant's application (client) ids: a validation token's `aud` must be one.
    pub app_ids: Vec<String>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("client_state", &crate::secret::REDACTED)
            .field("rich", &self.rich.as_ref().map(|rich| &rich.app_ids))
            .finish()
    }
}

/// How long the webhook keeps a subscription's check before reading the table again.
pub const CHECK_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The webhook's view of the subscriptions: each Graph id's check, read from the table and
/// kept for [`CHECK_CACHE_TTL`], so a burst of notifications costs one read and one decryption
/// per subscription instead of per request.
///
/// A Graph id's check never changes (its clientState is set when the subscription is
/// created), so an entry can only go stale by its subscription being deleted or recreated;
/// an item accepted in that window is harmless (its job finds the subscription gone, or
/// fetches a resource tenantd subscribed to). Ids the table does not have are not remembered,
/// so a subscription created a moment ago is accepted at once, and nothing an attacker sends
/// grows the cache.
pub struct CheckCache {
    store: Store,
    keys: std::sync::Arc<Keyring>,
    ttl: std::time::Duration,
    entries: std::sync::RwLock<HashMap<String, (std::sync::Arc<Check>, tokio::time::Instant)>>,
}

impl std::fmt::Debug for CheckCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCache").finish_non_exhaustive()
    }
}

impl CheckCache {
    /// An empty cache over `store`, opening clientStates with `keys`, keeping entries for
    /// [`CHECK_CACHE_TTL`].
    pub fn new(store: Store, keys: std::sync::Arc<Keyring>) -> Self {
        Self::with_ttl(store, keys, CHECK_CACHE_TTL)
    }

    /// The same with entries kept for `ttl`.
    pub fn with_ttl(store: Store, keys: std::sync::Arc<Keyring>, ttl: std::time::Duration) -> Self {
        Self {
            store,
            keys,
            ttl,
            entries: std::sync::RwLock::default(),
        }
    }

    /// The checks for these Graph ids when every one of them is cached and fresh (without
    /// waiting for anything), else `None`: the webhook's fast path.
    pub fn cached<'i>(
        &self,
        graph_ids: impl Iterator<Item = &'i str>,
    ) -> Option<HashMap<String, std::sync::Arc<Check>>> {
        let now = tokio::time::Instant::now();
        let entries = self.entries.read().expect("check cache lock");
        let mut found = HashMap::new();
        for id in graph_ids {
            match entries.get(id) {
                Some((check, read_at)) if now.duration_since(*read_at) < self.ttl => {
                    found.insert(id.to_string(), std::sync::Arc::clone(check));
                }
                _ => return None,
            }
        }
        Some(found)
    }

    /// The checks for these Graph ids; ids tenantd does not know are absent.
    ///
    /// # Errors
    /// A vault failure, or the database.
    pub async fn get(
        &self,
        graph_ids: &[&str],
    ) -> Result<HashMap<String, std::sync::Arc<Check>>, SubscriptionError> {
        let now = tokio::time::Instant::now();
        let mut found = HashMap::with_capacity(graph_ids.len());
        let mut missing: Vec<&str> = Vec::new();
        {
            let entries = self.entries.read().expect("check cache lock");
            for id in graph_ids {
                match entries.get(*id) {
                    Some((check, read_at)) if now.duration_since(*read_at) < self.ttl => {
                        found.insert((*id).to_string(), std::sync::Arc::clone(check));
                    }
                    _ if !missing.contains(id) => missing.push(id),
                    _ => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read = checks_for(&self.store, &self.keys, &missing).await?;
        let mut entries = self.entries.write().expect("check cache lock");
        // Entries of deleted subscriptions would otherwise stay: drop the stale ones now and
        // then (the map holds at most the subscriptions seen within the TTL).
        if entries.len() >= 64 {
            entries.retain(|_, (_, read_at)| now.duration_since(*read_at) < self.ttl);
        }
        for (graph_id, check) in read {
            let check = std::sync::Arc::new(check);
            entries.insert(graph_id.clone(), (std::sync::Arc::clone(&check), now));
            found.insert(graph_id, check);
        }
        Ok(found)
    }
}

/// What notifications naming these Graph subscription ids are checked against; ids tenantd
/// does not know are absent.
///
/// # Errors
/// A vault failure, or the database.
pub async fn checks_for(
    store: &Store,
    keys: &Keyring,
    graph_ids: &[&str],
) -> Result<HashMap<String, Check>, SubscriptionError> {
    if graph_ids.is_empty() {
        return Ok(HashMap::new());
    }
    type CheckRow = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<CheckRow> = with_pool!(store, |pool| {
        let mut query = sqlx::QueryBuilder::new(
            "SELECT graph_id, id, tenant_id, client_state, encryption_certificate_id, encryption_key \
             FROM subscriptions WHERE graph_id IN (",
        );
        let mut ids = query.separated(", ");
        for id in graph_ids {
            ids.push_bind(*id);
        }
        query.push(")");
        query
            .build_query_as()
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?
    });
    let mut checks = HashMap::with_capacity(rows.len());
    for (graph_id, id, tenant_id, sealed, certificate_id, sealed_key) in rows {
        let client_state = keys.open_string(&sealed, client_state_slot(&id))?;
        let rich = match (certificate_id, sealed_key) {
            (Some(certificate_id), Some(sealed_key)) => {
                let pkcs8 = keys.open(&sealed_key, encryption_key_slot(&id))?;
                let app_ids = crate::vault::connections::list(store, Some(&tenant_id))
                    .await
                    .map_err(|err| StoreError::Query(err.to_string()))?
                    .into_iter()
                    .map(|connection| connection.client_id)
                    .collect();
                Some(RichCheck {
                    key: crate::rich_notifications::DecryptionKey::from_pkcs8(
                        &certificate_id,
                        &pkcs8,
                    )?,
                    app_ids,
                })
            }
            _ => None,
        };
        checks.insert(
            graph_id,
            Check {
                id,
                tenant_id,
                client_state,
                rich,
            },
        );
    }
    Ok(checks)
}
