//! Change and lifecycle notifications, and the validation handshake.
//!
//! Sources: https://learn.microsoft.com/graph/change-notifications-delivery-webhooks (payload,
//! 3-second answer, redelivery for up to 4 hours), .../change-notifications-lifecycle-events
//! (`reauthorizationRequired`, `subscriptionRemoved`, `missed`), and the notificationUrl
//! validation include: Graph POSTs `?validationToken=<opaque>` with `Content-Type: text/plain;
//! charset=utf-8` and needs 200, `text/plain` and the decoded token back within 10 seconds.
//!
//! Invariants: a notification is built only for a live subscription of the same tenant whose
//! change types include the change; a failed delivery is retried with exponential backoff and
//! then recorded as failed, never dropped silently; bodies never leave through logs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::world::{Subscription, Watched, World};
use crate::{clock, AppState};

/// What changed, for matching against subscriptions.
#[derive(Debug, Clone)]
pub enum ChangeTarget {
    /// A message in a mailbox folder.
    Message {
        /// Mailbox owner.
        user_id: String,
        /// Folder id.
        folder_id: String,
    },
    /// An event in a user's calendar.
    Event {
        /// Calendar owner.
        user_id: String,
    },
    /// An item in a user's drive.
    DriveItem {
        /// Drive owner.
        user_id: String,
    },
    /// A directory user.
    User,
    /// A message in a chat.
    ChatMessage {
        /// The chat.
        chat_id: String,
    },
}

/// A change to a watched resource.
#[derive(Debug, Clone)]
pub struct Change {
    /// Tenant.
    pub tenant: String,
    /// `created`, `updated` or `deleted`.
    pub change_type: &'static str,
    /// What changed.
    pub target: ChangeTarget,
    /// The `resource` of the notification, in the form of the published sample.
    pub resource: String,
    /// The other forms Microsoft documents for the same resource; deliveries take turns
    /// through `resource` and these (see [`Notifier::next_form`]).
    pub other_forms: Vec<String>,
    /// The `resourceData` of the notification.
    pub resource_data: Value,
    /// The whole resource as Graph would return it, for rich notifications (`None` for
    /// resources Graph sends no resource data for).
    pub content: Option<Value>,
}

fn watches(watched: &Watched, target: &ChangeTarget) -> bool {
    match (watched, target) {
        (
            Watched::Messages { user_id, folder_id },
            ChangeTarget::Message {
                user_id: changed_user,
                folder_id: changed_folder,
            },
        ) => user_id == changed_user && folder_id.as_ref().is_none_or(|f| f == changed_folder),
        (Watched::Events { user_id }, ChangeTarget::Event { user_id: changed }) => {
            user_id == changed
        }
        (Watched::DriveRoot { user_id }, ChangeTarget::DriveItem { user_id: changed }) => {
            user_id == changed
        }
        (Watched::Users, ChangeTarget::User) => true,
        (Watched::ChatMessages { chat_id }, ChangeTarget::ChatMessage { chat_id: changed }) => {
            chat_id.as_ref().is_none_or(|c| c == changed)
        }
        _ => false,
    }
}

/// One POST to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The subscription it is for.
    pub subscription_id: String,
    /// `change` or `lifecycle`.
    pub kind: &'static str,
    /// Where to POST.
    pub url: String,
    /// The JSON body.
    pub body: Value,
}

/// What happened to a delivery, for the control API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Subscription id.
    pub subscription_id: String,
    /// `change` or `lifecycle`.
    pub kind: &'static str,
    /// `changeType` or `lifecycleEvent` of the first item.
    pub event: String,
    /// `delivered` or `failed`.
    pub outcome: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Last HTTP status, if any answer came.
    pub last_status: Option<u16>,
    /// When it finished.
    pub finished_at: String,
}

/// The delivery queue and its log.
#[derive(Debug)]
pub struct Notifier {
    sender: mpsc::UnboundedSender<Delivery>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Delivery>>>,
    log: Mutex<VecDeque<DeliveryRecord>>,
    client: reqwest::Client,
    /// Deliveries made so far: which documented form the next one takes.
    forms: std::sync::atomic::AtomicU64,
}

const LOG_CAPACITY: usize = 10_000;

impl Default for Notifier {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        // Bundled roots: the machine's trust store is not needed (nor read) to post.
        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok());
        let client = reqwest::Client::builder()
            .tls_certs_only(roots)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("graph-emulator change notifications")
            .build()
            .expect("a plain HTTP client builds");
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            log: Mutex::new(VecDeque::new()),
            client,
            forms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Notifier {
    /// Which of `count` documented forms the next item takes: they take turns, in the same
    /// order in every run (deterministic, like the seeded faults), so a test that sends three
    /// messages meets all three Outlook forms.
    pub fn next_form(&self, count: usize) -> usize {
        let turn = self
            .forms
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        usize::try_from(turn % u64::try_from(count.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    /// Queues a delivery.
    pub fn send(&self, delivery: Delivery) {
        // The receiver lives as long as the emulator; after stop, deliveries are moot.
        let _ = self.sender.send(delivery);
    }

    /// Finished deliveries, oldest first.
    pub fn records(&self) -> Vec<DeliveryRecord> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn record(&self, record: DeliveryRecord) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// The HTTP client used for handshakes and deliveries.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// One notification item as Graph shapes it, in one of the forms Microsoft publishes for it:
/// - the resource path in turns through every documented form ([`Change::other_forms`]):
///   Outlook's `users/{id}@{tenant}/messages/{id}` with a notification `id` (sample 01,
///   concepts/change-notifications-delivery-webhooks.md), `Users/{id}/Messages/{id}` and
///   `Users('{id}')/messages('{id}')` without one (concepts/outlook-change-notifications-overview.md);
/// - `changeType` capitalised (`Created`, `Updated`, `Deleted`) for an Outlook subscription
///   with `$filter`, as that document writes them;
/// - no `tenantId` on OneDrive items (OneDrive's notifications carry none:
///   concepts/webhooks.md's driveItem sample, onedrive's webhook-receiving docs).
fn item(state: &AppState, subscription: &Subscription, change: &Change) -> Value {
    let forms: Vec<&String> = std::iter::once(&change.resource)
        .chain(&change.other_forms)
        .collect();
    let form = state.notifier.next_form(forms.len());
    let filtered = subscription.resource.contains("$filter")
        && matches!(
            change.target,
            ChangeTarget::Message { .. } | ChangeTarget::Event { .. }
        );
    let change_type = if filtered {
        let mut chars = change.change_type.chars();
        chars
            .next()
            .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    } else {
        change.change_type.to_string()
    };
    let mut item = json!({
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": clock::graph(subscription.expiration),
        "changeType": change_type,
        "resource": forms[form],
        "resourceData": change.resource_data,
    });
    if form == 0 {
        item["id"] = json!(crate::world::random_secret(13));
    }
    if !matches!(change.target, ChangeTarget::DriveItem { .. }) {
        item["tenantId"] = json!(subscription.tenant);
    }
    if let Some(client_state) = &subscription.client_state {
        item["clientState"] = json!(client_state);
    }
    if subscription.include_resource_data {
        let certificate = subscription
            .echo
            .get("encryptionCertificate")
            .and_then(Value::as_str)
            .and_then(crate::rich::Certificate::parse);
        let id = subscription
            .echo
            .get("encryptionCertificateId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let (Some(certificate), Some(content)) = (certificate, &change.content) {
            let content = crate::rich::selected(content, &subscription.resource);
            item["encryptedContent"] = certificate.encrypt(id, &content);
        }
    }
    item
}

/// Queues a notification for every subscription that watches `change`.
pub fn publish(state: &AppState, world: &World, change: Change) {
    let now = clock::now();
    for subscription in world.subscriptions.values() {
        let live = subscription.expiration > now;
        if subscription.tenant == change.tenant
            && live
            && subscription
                .change_types
                .iter()
                .any(|c| c == change.change_type)
            && watches(&subscription.watched, &change.target)
        {
            let mut body = json!({"value": [item(state, subscription, &change)]});
            if subscription.include_resource_data {
                // One token per app and tenant in the delivery (here: one item).
                body["validationTokens"] =
                    json!([state
                        .token_signer
                        .sign(&crate::rich::TokenClaims::for_delivery(
                            &subscription.tenant,
                            &subscription.application_id,
                            now,
                        ))]);
            }
            state.notifier.send(Delivery {
                subscription_id: subscription.id.clone(),
                kind: "change",
                url: subscription.notification_url.clone(),
                body,
            });
        }
    }
}

/// Queues a lifecycle notification (shape of samples 05-07). Returns false when the
/// subscription has no lifecycle URL.
pub fn lifecycle(state: &AppState, subscription: &Subscription, event: &str) -> bool {
    let Some(url) = &subscription.lifecycle_url else {
        return false;
    };
    let mut item = json!({
        "lifecycleEvent": event,
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": clock::graph(subscription.expiration),
        "tenantId": subscription.tenant,
    });
    if let Some(client_state) = &subscription.client_state {
        item["clientState"] = json!(client_state);
    }
    state.notifier.send(Delivery {
        subscription_id: subscription.id.clone(),
        kind: "lifecycle",
        url: url.clone(),
        body: json!({"value": [item]}),
    });
    true
}

/// Starts the delivery loop: one task per delivery so a slow endpoint delays only its own.
pub fn spawn_delivery(state: AppState, stop: CancellationToken) {
    let Some(mut receiver) = state
        .notifier
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                next = receiver.recv() => match next {
                    Some(delivery) => {
                        let state = state.clone();
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = deliver(state, delivery) => {}
                            }
                        });
                    }
                    None => break,
                }
            }
        }
    });
}

async fn deliver(state: AppState, delivery: Delivery) {
    let settings = state.settings();
    let delay = state.throttle.faults().notification_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let event = delivery.body["value"][0]
        .get("changeType")
        .or_else(|| delivery.body["value"][0].get("lifecycleEvent"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut attempts = 0;
    let mut last_status = None;
    loop {
        attempts += 1;
        let sent = state
            .notifier
            .client
            .post(&delivery.url)
            .json(&delivery.body)
            .timeout(Duration::from_millis(settings.delivery_timeout_ms))
            .send()
            .await;
        let ok = match &sent {
            Ok(response) => {
                last_status = Some(response.status().as_u16());
                response.status().is_success()
            }
            Err(_) => false,
        };
        if ok {
            state.count("notifications_delivered");
            state.notifier.record(DeliveryRecord {
                subscription_id: delivery.subscription_id,
                kind: delivery.kind,
                event,
                outcome: "delivered",
                attempts,
                last_status,
                finished_at: clock::graph(clock::now()),
            });
            return;
        }
        state.count("notification_attempts_failed");
        if attempts > settings.delivery_retries {
            state.count("notifications_failed");
            tracing::warn!(
                subscription.id = %delivery.subscription_id,
                attempts,
                "notification not delivered; giving up as Graph does"
            );
            state.notifier.record(DeliveryRecord {
                subscription_id: delivery.subscription_id,
                kind: delivery.kind,
                event,
                outcome: "failed",
                attempts,
                last_status,
                finished_at: clock::graph(clock::now()),
            });
            return;
        }
        let backoff = settings
            .delivery_retry_base_ms
            .saturating_mul(1 << (attempts - 1).min(16));
        tokio::time::sleep(Duration::from_millis(backoff)).await;
    }
}

/// Why a validation handshake failed; the messages are Graph's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandshakeError {
    /// No answer in time.
    #[error("Subscription validation request timed out.")]
    Timeout,
    /// Not reachable, or not 200.
    #[error("Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.")]
    Status,
    /// Wrong content type.
    #[error("Subscription validation request failed. Must respond with 200 OK to this request and the content type must be text/plain.")]
    ContentType,
    /// Wrong body.
    #[error("Subscription validation request failed. Response must exactly match validationToken query parameter.")]
    Body,
}

/// Performs the validation handshake against `url`.
///
/// # Errors
/// [`HandshakeError`] naming what the endpoint got wrong.
pub async fn handshake(state: &AppState, url: &str) -> Result<(), HandshakeError> {
    let settings = state.settings();
    // Real tokens look like this and contain spaces and colons, so they exercise decoding.
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        crate::world::guid()
    );
    let mut target = url::Url::parse(url).map_err(|_| HandshakeError::Status)?;
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let sent = state
        .notifier
        .client
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(Duration::from_millis(settings.handshake_timeout_ms))
        .send()
        .await;
    state.count("validation_handshakes");
    let response = match sent {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return Err(HandshakeError::Timeout),
        Err(_) => return Err(HandshakeError::Status),
    };
    if response.status() != reqwest::StatusCode::OK {
        return Err(HandshakeError::Status);
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !content_type.starts_with("text/plain") {
        return Err(HandshakeError::ContentType);
    }
    let body = match tokio::time::timeout(
        Duration::from_millis(settings.handshake_timeout_ms),
        response.text(),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return Err(HandshakeError::Body),
        Err(_) => return Err(HandshakeError::Timeout),
    };
    if body != token {
        return Err(HandshakeError::Body);
    }
    Ok(())
}
