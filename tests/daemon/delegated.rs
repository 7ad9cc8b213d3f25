//! Delegated actions (seed 003): mail sent and events created, updated and cancelled as a
//! signed-in staff user through a delegated connection, handed to tenantd as jobs; app-only
//! connections refused; replies linked back within the tenant's lookback window only.

use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
use serde_json::json;
use tenantd::attribution::{self, Inbound};
use tenantd::jobs::Registry;
use tenantd::mailbox::StoredMessage;
use tenantd::queue::Queue;
use tenantd::vault::connections::Connection;
use tenantd::vault::Keyring;

use crate::helpers::{spawn_app_with, test_config, TestApp, TestDb};
use crate::on_both_backends;
use crate::webhooks::TENANT;

struct Env {
    app: TestApp,
    emulator: graph_emulator::Emulator,
    adele: Connection,
    app_connection: Connection,
    alex_id: String,
    client_id: String,
    secret: String,
}

async fn env(db: &TestDb) -> Env {
    env_with(db, false).await
}

/// [`env`], with `subscribe` a configured subscription to Adele's messages whose
/// notifications the daemon's own webhook listener receives.
async fn env_with(db: &TestDb, subscribe: bool) -> Env {
    let emulator = graph_emulator::Emulator::start_local().await.unwrap();
    let now = graph_emulator::clock::now();
    let (client_id, secret, alex_id) = {
        let mut world = emulator.shared().world();
        world
            .seed_tenant(TenantSeed {
                id: Some(TENANT.into()),
                domain: "contoso.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .unwrap();
        let mut ids = Vec::new();
        for name in ["adele", "alex"] {
            ids.push(
                world
                    .seed_user(
                        TENANT,
                        UserSeed {
                            user_principal_name: format!("{name}@contoso.onmicrosoft.com"),
                            display_name: None,
                            usage_location: Some("DE".into()),
                            license: Some("ENTERPRISEPACK".into()),
                        },
                        now,
                        time::Duration::ZERO,
                    )
                    .unwrap(),
            );
        }
        let (client_id, secret) = world
            .seed_app(
                TENANT,
                AppSeed {
                    client_id: None,
                    client_secret: None,
                    public_client: false,
                    display_name: Some("tenantd".into()),
                    redirect_uris: vec![],
                    application_permissions: vec![
                        "Mail.ReadWrite".into(),
                        "Mail.Send".into(),
                        "User.Read.All".into(),
                    ],
                    delegated_permissions: vec![
                        "User.Read".into(),
                        "Mail.Send".into(),
                        "Mail.ReadWrite".into(),
                        "Calendars.ReadWrite".into(),
                    ],
                    admin_consented: true,
                },
                now,
            )
            .unwrap();
        (client_id, secret.unwrap(), ids[1].clone())
    };
    let mut config = test_config(db);
    config.graph.base_url = url::Url::parse(&emulator.graph_url()).unwrap();
    config.identity.authority = url::Url::parse(&emulator.base_url()).unwrap();
    if subscribe {
        let adele_id = {
            let world = emulator.shared().world();
            world.tenants[TENANT]
                .users
                .values()
                .find(|u| u.upn.starts_with("adele"))
                .unwrap()
                .id
                .clone()
        };
        crate::helpers::public_listener_on_free_port(&mut config);
        config.subscriptions = vec![tenantd::config::SubscriptionConfig {
            tenant: TENANT.into(),
            resource: format!("users/{adele_id}/messages"),
            change_types: vec!["created".into()],
            include_resource_data: false,
        }];
    }
    let keys = Keyring::load(&config.secrets.key_file).unwrap();
    let store = db.store().await;
    store.migrate().await.unwrap();
    let app_connection =
        crate::helpers::default_app(&store, &keys, &emulator, TENANT, &client_id, &secret).await;
    // Adele signs in once with the device code flow; her refresh token is kept.
    let adele = crate::helpers::sign_in_delegated(
        &store,
        &keys,
        &emulator,
        TENANT,
        &client_id,
        "adele@contoso.onmicrosoft.com",
        "offline_access User.Read Mail.Send Calendars.ReadWrite",
    )
    .await;
    let app = spawn_app_with(config).await;
    Env {
        app,
        emulator,
        adele,
        app_connection,
        alex_id,
        client_id,
        secret,
    }
}

/// Queues `payload` as `kind` the way `tenantd enqueue` does and waits for the outcome.
async fn enqueue_and_wait(
    app: &TestApp,
    db: &TestDb,
    kind: &str,
    payload: serde_json::Value,
) -> String {
    let job = Registry::standard().prepare(kind, payload).unwrap();
    let id = Queue::new(db.store().await)
        .enqueue(&job)
        .await
        .unwrap()
        .id()
        .to_string();
    crate::helpers::job_outcome(app, db, &id).await
}

fn inbound(stored: &StoredMessage) -> Inbound<'_> {
    Inbound {
        message_id: &stored.message_id,
        internet_message_id: stored.internet_message_id.as_deref(),
        conversation_id: stored.conversation_id.as_deref(),
        in_reply_to: stored.in_reply_to.as_deref(),
        from_address: stored.from_address.as_deref(),
        received_at: stored.received_at.as_deref(),
    }
}

fn inbox(emulator: &graph_emulator::Emulator, user_id: &str) -> Vec<serde_json::Value> {
    let world = emulator.shared().world();
    // A mailbox nothing touched yet is made on first use.
    let Some(mailbox) = world.tenants[TENANT].users[user_id].mailbox.as_ref() else {
        return Vec::new();
    };
    let inbox = mailbox.folder("inbox").unwrap().id.clone();
    mailbox
        .messages
        .values()
        .filter(|m| m["parentFolderId"] == inbox.as_str())
        .cloned()
        .collect()
}

async fn mail_is_sent_once_as_the_user_and_replies_link_back_within_the_window(db: TestDb) {
    let env = env(&db).await;
    let payload = json!({
        "tenant_id": TENANT, "user": "adele@contoso.onmicrosoft.com",
        "to": ["alex@contoso.onmicrosoft.com"], "subject": "Your offer", "body": "Please find it attached.",
        "request_id": "crm-4711"
    });
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", payload.clone()).await,
        "succeeded"
    );
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", payload).await,
        "succeeded"
    );
    let received = inbox(&env.emulator, &env.alex_id);
    assert_eq!(received.len(), 1, "one request id, one mail");
    assert_eq!(
        received[0]["sender"]["emailAddress"]["address"],
        "adele@contoso.onmicrosoft.com"
    );
    let actions = attribution::list(&db.store().await, TENANT).await.unwrap();
    assert_eq!(actions.len(), 1);
    let sent = &actions[0].action;
    assert_eq!((sent.kind.as_str(), sent.state.as_str()), ("mail", "done"));
    assert_eq!(sent.user_id, env.adele.user_id);
    assert_eq!(
        sent.internet_message_id.as_deref(),
        received[0]["internetMessageId"].as_str()
    );

    // Alex replies; the reply lands in Adele's Inbox, as the notification worker would store it.
    let token = crate::webhooks::app_token(&env.emulator, &env.client_id, &env.secret).await;
    let original = received[0]["id"].as_str().unwrap();
    let replied = reqwest::Client::new()
        .post(format!(
            "{}/users/{}/messages/{original}/reply",
            env.emulator.graph_url(),
            env.alex_id
        ))
        .bearer_auth(&token)
        .json(&json!({"comment": "Accepted, thanks."}))
        .send()
        .await
        .unwrap();
    assert_eq!(replied.status(), 202);
    let reply = inbox(&env.emulator, &env.adele.user_id).remove(0);
    let stored = StoredMessage::from_graph(&reply, &env.adele.user_id, "s").unwrap();
    assert_eq!(
        stored.in_reply_to.as_deref(),
        sent.internet_message_id.as_deref()
    );
    let store = db.store().await;
    // The sent copy itself is no reply.
    let own = inbound(&stored);
    let own = Inbound {
        message_id: "copy",
        internet_message_id: sent.internet_message_id.as_deref(),
        in_reply_to: None,
        ..own
    };
    assert_eq!(
        attribution::link_reply(&store, TENANT, &own).await.unwrap(),
        None
    );
    // Within 90 days (the default): linked by In-Reply-To.
    let link = attribution::link_reply(&store, TENANT, &inbound(&stored))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (link.action_id.as_str(), link.matched_by.as_str()),
        (sent.id.as_str(), "in_reply_to")
    );
    // The same conversation without the header still links.
    let mut by_conversation = stored.clone();
    by_conversation.message_id = "later".into();
    by_conversation.in_reply_to = None;
    let link = attribution::link_reply(&store, TENANT, &inbound(&by_conversation))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.matched_by, "conversation");
    // With a 30-day window, an action from 45 days ago is outside it and pruned.
    attribution::set_lookback(&store, TENANT, 30).await.unwrap();
    assert!(attribution::set_lookback(&store, TENANT, 45).await.is_err());
    let now = tenantd::clock::now_unix();
    db.execute(&format!(
        "UPDATE delegated_actions SET created_at = {}",
        now - 45 * 86_400
    ))
    .await;
    let mut late = stored.clone();
    late.message_id = "late".into();
    assert_eq!(
        attribution::link_reply(&store, TENANT, &inbound(&late))
            .await
            .unwrap(),
        None
    );
    assert_eq!(attribution::prune(&store, now).await.unwrap(), 1);
    assert_eq!(
        db.strings("SELECT message_id FROM attribution_links")
            .await
            .len(),
        0,
        "links go with their action"
    );
    env.app.stop().await.unwrap();
}

async fn events_are_created_once_updated_and_cancelled_as_the_user(db: TestDb) {
    let env = env(&db).await;
    let event = json!({"subject": "Appointment", "start": {"dateTime": "2026-12-10T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-10T09:30:00", "timeZone": "UTC"},
        "attendees": [{"emailAddress": {"address": "alex@contoso.onmicrosoft.com"}, "type": "required"}]});
    let create = json!({"tenant_id": TENANT, "connection_id": env.adele.id, "action": "create", "event": event, "request_id": "pcas-1"});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_event", create.clone()).await,
        "succeeded"
    );
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_event", create).await,
        "succeeded"
    );
    let events = || {
        let world = env.emulator.shared().world();
        world.tenants[TENANT].users[&env.adele.user_id]
            .mailbox
            .as_ref()
            .unwrap()
            .events
            .values()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(events().len(), 1, "one request id, one event");
    let id = events()[0]["id"].as_str().unwrap().to_string();
    let update = json!({"tenant_id": TENANT, "user": "adele@contoso.onmicrosoft.com", "action": "update", "event_id": id,
        "event": {"subject": "Appointment (moved)"}});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_event", update).await,
        "succeeded"
    );
    assert_eq!(events()[0]["subject"], "Appointment (moved)");
    let cancel = json!({"tenant_id": TENANT, "user": "adele@contoso.onmicrosoft.com", "action": "cancel", "event_id": id, "comment": "Sorry"});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_event", cancel.clone()).await,
        "succeeded"
    );
    assert!(events().is_empty(), "cancelled");
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_event", cancel).await,
        "failed event_not_found"
    );
    env.app.stop().await.unwrap();
}

async fn app_only_connections_and_bad_payloads_are_refused(db: TestDb) {
    let env = env(&db).await;
    let as_app = json!({"tenant_id": TENANT, "connection_id": env.app_connection.id,
        "to": ["alex@contoso.onmicrosoft.com"], "subject": "x", "body": "y"});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", as_app).await,
        "failed delegated_connection_required"
    );
    let nobody = json!({"tenant_id": TENANT, "user": "mallory@example.com", "to": ["alex@contoso.onmicrosoft.com"], "subject": "x", "body": "y"});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", nobody).await,
        "failed connection_not_found"
    );
    let registry = Registry::standard();
    assert!(registry
        .prepare("delegated_send_mail", json!({"tenant_id": TENANT}))
        .unwrap_err()
        .contains("missing field"));
    assert!(registry
        .prepare("send_fax", json!({}))
        .unwrap_err()
        .contains("delegated_send_mail"));
    // A connection row whose authority is Azure AD B2C (written by another system into the
    // shared database; `tenant connect` refuses such authorities): not a staff identity.
    db.execute(&format!(
        "UPDATE connections SET authority = 'https://contosob2c.b2clogin.com/contosob2c.onmicrosoft.com/B2C_1_signin' WHERE id = '{}'",
        env.adele.id
    ))
    .await;
    let as_b2c = json!({"tenant_id": TENANT, "user": "adele@contoso.onmicrosoft.com",
        "to": ["alex@contoso.onmicrosoft.com"], "subject": "x", "body": "y"});
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", as_b2c).await,
        "failed identity_not_allowed"
    );
    assert!(
        inbox(&env.emulator, &env.alex_id).is_empty(),
        "nothing was sent"
    );
    env.app.stop().await.unwrap();
}

/// The whole way: Adele's mail sent through tenantd, Alex's reply notified by Graph to the
/// webhook, fetched by a worker and linked to the action; her own Sent Items copy (notified
/// too) is not.
async fn a_reply_notified_through_the_subscription_is_linked_to_the_sent_mail(db: TestDb) {
    let env = env_with(&db, true).await;
    crate::webhooks::eventually(
        &db,
        "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id IS NOT NULL",
    )
    .await;
    let payload = json!({
        "tenant_id": TENANT, "user": "adele@contoso.onmicrosoft.com",
        "to": ["alex@contoso.onmicrosoft.com"], "subject": "Quarterly review", "body": "Does Thursday work?",
        "request_id": "crm-5150"
    });
    assert_eq!(
        enqueue_and_wait(&env.app, &db, "delegated_send_mail", payload).await,
        "succeeded"
    );
    let original = inbox(&env.emulator, &env.alex_id).remove(0);
    let token = crate::webhooks::app_token(&env.emulator, &env.client_id, &env.secret).await;
    let replied = reqwest::Client::new()
        .post(format!(
            "{}/users/{}/messages/{}/reply",
            env.emulator.graph_url(),
            env.alex_id,
            original["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"comment": "Thursday works."}))
        .send()
        .await
        .unwrap();
    assert_eq!(replied.status(), 202);
    let linked = crate::webhooks::eventually(
        &db,
        "SELECT l.matched_by || ' ' || a.request_id FROM attribution_links l JOIN delegated_actions a ON a.id = l.action_id",
    )
    .await;
    assert_eq!(linked, ["in_reply_to crm-5150"]);
    // Both of Adele's messages were stored from notifications; only the reply is linked.
    crate::webhooks::eventually(
        &db,
        "SELECT 'both' FROM (SELECT COUNT(*) AS n FROM messages WHERE subject LIKE '%Quarterly review%') c WHERE c.n >= 2",
    )
    .await;
    assert_eq!(
        db.strings("SELECT message_id FROM attribution_links")
            .await
            .len(),
        1
    );
    env.app.stop().await.unwrap();
}

on_both_backends!(
    a_reply_notified_through_the_subscription_is_linked_to_the_sent_mail,
    mail_is_sent_once_as_the_user_and_replies_link_back_within_the_window,
    events_are_created_once_updated_and_cancelled_as_the_user,
    app_only_connections_and_bad_payloads_are_refused,
);
