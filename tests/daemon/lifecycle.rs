//! Lifecycle events end to end, on both databases: the emulator sends them to the daemon's
//! lifecycle URL as Graph does, the daemon answers each: `missed` → a delta resync of the
//! folder (mail that arrived unnotified is stored, mail deleted unnotified is marked, the
//! next resync starts from the delta link); `reauthorizationRequired` → reauthorized at
//! Graph; `subscriptionRemoved` → created again (a new Graph id) before the resync reads
//! what changed meanwhile, from the last known point.

use serde_json::json;

use crate::helpers::TestDb;
use crate::on_both_backends;
use crate::webhooks::{eventually, live_with, Live, TENANT};

/// Puts a message into the user's Inbox at the emulator without notifying anyone (as if
/// Graph had dropped the notification).
/// Runs `change` on the user's mailbox at the emulator.
fn in_mailbox<T>(live: &Live, change: impl FnOnce(&mut graph_emulator::world::Mailbox) -> T) -> T {
    let mut world = live.emulator.shared().world();
    change(
        world
            .tenants
            .get_mut(TENANT)
            .unwrap()
            .users
            .get_mut(&live.user_id)
            .unwrap()
            .mailbox
            .as_mut()
            .unwrap(),
    )
}

fn unnotified_message(live: &Live, subject: &str) -> String {
    unnotified_message_at(live, subject, "2026-12-01T10:00:00Z")
}

fn unnotified_message_at(live: &Live, subject: &str, received: &str) -> String {
    in_mailbox(live, |mailbox| {
        let inbox = mailbox.folder("inbox").unwrap().id.clone();
        let id = format!("AAMkUnnotified{}", subject.replace(' ', ""));
        mailbox.put_message(json!({
            "@odata.etag": "W/\"CQAAABYAAAB\"",
            "id": id,
            "subject": subject,
            "parentFolderId": inbox,
            "receivedDateTime": received,
            "internetMessageId": format!("<{id}@contoso.onmicrosoft.com>"),
            "conversationId": "AAQkConversation",
            "bodyPreview": "sent while notifications were lost",
            "from": {"emailAddress": {"name": "Adele", "address": "adele@contoso.onmicrosoft.com"}},
        }));
        id
    })
}

fn unnotified_delete(live: &Live, id: &str) {
    in_mailbox(live, |mailbox| mailbox.take_message(id).unwrap());
}

async fn lifecycle(live: &Live, graph_id: &str, event: &str) {
    let sent = reqwest::Client::new()
        .post(format!(
            "{}/_emulator/subscriptions/{graph_id}/lifecycle",
            live.emulator.base_url()
        ))
        .json(&json!({"event": event}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202, "{event}");
}

async fn every_lifecycle_event_is_handled(db: TestDb) {
    let live = live_with(&db, "mailFolders('Inbox')/messages", false).await;

    // missed: what arrived meanwhile is read with a delta query.
    let first = unnotified_message(&live, "Lost one");
    let second = unnotified_message(&live, "Lost two");
    lifecycle(&live, &live.graph_id, "missed").await;
    let both = eventually(
        &db,
        "SELECT CAST(count(*) AS TEXT) FROM messages WHERE deleted = 0 AND subject LIKE 'Lost%' HAVING count(*) = 2",
    )
    .await;
    assert_eq!(both, ["2"], "both unnotified messages stored");
    let resynced = eventually(
        &db,
        "SELECT delta_link FROM subscriptions WHERE delta_link IS NOT NULL AND reason IS NULL",
    )
    .await;
    assert!(resynced[0].contains("$deltatoken") || resynced[0].contains("%24deltatoken"));

    // missed again: only the changes since the delta link, a deletion among them.
    unnotified_delete(&live, &first);
    unnotified_message(&live, "Lost three");
    live.emulator.shared().throttle.clear_requests();
    lifecycle(&live, &live.graph_id, "missed").await;
    eventually(
        &db,
        &format!("SELECT message_id FROM messages WHERE deleted = 1 AND message_id = '{first}'"),
    )
    .await;
    eventually(
        &db,
        "SELECT subject FROM messages WHERE deleted = 0 AND subject = 'Lost three'",
    )
    .await;
    let kept = db
        .strings(&format!(
            "SELECT subject FROM messages WHERE deleted = 0 AND message_id = '{second}'"
        ))
        .await;
    assert_eq!(kept, ["Lost two"]);
    let resync_requests: Vec<String> = live
        .emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/messages/delta"))
        .map(|r| r.path)
        .collect();
    assert_eq!(resync_requests.len(), 1, "one page from the delta link");

    // reauthorizationRequired: reauthorized at Graph.
    let before = live
        .emulator
        .shared()
        .counters()
        .get("subscriptions_reauthorized")
        .copied()
        .unwrap_or(0);
    lifecycle(&live, &live.graph_id, "reauthorizationRequired").await;
    for _ in 0..200 {
        let now = live
            .emulator
            .shared()
            .counters()
            .get("subscriptions_reauthorized")
            .copied()
            .unwrap_or(0);
        if now > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        live.emulator.shared().counters()["subscriptions_reauthorized"] > before,
        "reauthorized at Graph"
    );

    // subscriptionRemoved: created again with a new Graph id by the resync, without waiting
    // for the next reconcile.
    lifecycle(&live, &live.graph_id, "subscriptionRemoved").await;
    let recreated = eventually(
        &db,
        &format!(
            "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id IS NOT NULL AND graph_id <> '{}'",
            live.graph_id
        ),
    )
    .await;
    assert_ne!(recreated[0], live.graph_id);
    live.app.stop().await.unwrap();
}

/// concepts/change-notifications-lifecycle-events.md: after `subscriptionRemoved`, create a
/// new subscription, then resync. The new subscription exists before the resource is read
/// (so a change in between is seen by one or the other), and the read starts from the last
/// known point: mail received since the newest stored message, not the whole mailbox.
async fn a_removed_subscription_is_created_again_before_the_resync_reads(db: TestDb) {
    let live = live_with(&db, "messages", false).await;
    crate::webhooks::send_mail(
        &live.emulator,
        &live.client_id,
        &live.secret,
        &live.user_id,
        "Before the removal",
    )
    .await;
    eventually(
        &db,
        "SELECT subject FROM messages WHERE subject = 'Before the removal'",
    )
    .await;
    let now = graph_emulator::clock::now();
    // Mail Graph never notified: one from long before the last known point (the old
    // subscription would have told), one while Graph had no subscription.
    unnotified_message_at(
        &live,
        "Long before",
        &graph_emulator::clock::graph(now - time::Duration::days(2)),
    );
    unnotified_message_at(&live, "In the gap", &graph_emulator::clock::graph(now));
    live.emulator.shared().throttle.clear_requests();
    lifecycle(&live, &live.graph_id, "subscriptionRemoved").await;
    eventually(
        &db,
        "SELECT subject FROM messages WHERE deleted = 0 AND subject = 'In the gap'",
    )
    .await;
    let active = db
        .strings(
            "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id IS NOT NULL",
        )
        .await;
    assert_eq!(active.len(), 1);
    assert_ne!(active[0], live.graph_id, "a new subscription at Graph");
    let requests = live.emulator.shared().throttle.requests();
    let created = requests
        .iter()
        .position(|r| r.method == "POST" && r.path.ends_with("/subscriptions"))
        .expect("the subscription was created again");
    let read = requests
        .iter()
        .position(|r| {
            r.method == "GET"
                && r.path
                    .ends_with(&format!("/users/{}/messages", live.user_id))
        })
        .expect("the mailbox was read");
    assert!(
        created < read,
        "created again (request {created}) before the resync read (request {read})"
    );
    assert!(
        db.strings("SELECT subject FROM messages WHERE subject = 'Long before'")
            .await
            .is_empty(),
        "the resync read from the last known point, not the whole mailbox"
    );
    // And the new subscription delivers.
    crate::webhooks::send_mail(
        &live.emulator,
        &live.client_id,
        &live.secret,
        &live.user_id,
        "After the removal",
    )
    .await;
    eventually(
        &db,
        "SELECT subject FROM messages WHERE subject = 'After the removal'",
    )
    .await;
    live.app.stop().await.unwrap();
}

on_both_backends!(
    every_lifecycle_event_is_handled,
    a_removed_subscription_is_created_again_before_the_resync_reads
);
