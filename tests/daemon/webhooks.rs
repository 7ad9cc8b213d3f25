//! The webhook listener of the real daemon: the validation handshake, Microsoft's published
//! notification samples (placeholders filled as Graph would fill them), dedupe of redeliveries,
//! and refusals that queue nothing. On both databases; workers are off so queued jobs stay
//! visible.

use std::sync::Arc;

use tenantd::subscriptions::{self, Desired, Origin};
use tenantd::vault::Keyring;

use crate::helpers::{spawn_app_with, test_config, TestApp, TestDb};
use crate::on_both_backends;

pub(crate) const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
// Microsoft's samples, copied verbatim (graph-emulator/tests/samples/sources.md).
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/graph-emulator/tests/samples");

pub(crate) fn sample(name: &str) -> String {
    std::fs::read_to_string(format!("{SAMPLES}/{name}"))
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

struct Env {
    app: TestApp,
    db: TestDb,
    keys: Arc<Keyring>,
    config: tenantd::config::Config,
}

async fn env(db: TestDb) -> Env {
    env_with(db, |_| {}).await
}

async fn env_with(db: TestDb, adjust: impl FnOnce(&mut tenantd::config::Config)) -> Env {
    let mut config = test_config(&db);
    config.queue.workers = 0;
    adjust(&mut config);
    let keys = Arc::new(Keyring::load(&config.secrets.key_file).unwrap());
    let app = spawn_app_with(config.clone()).await;
    Env {
        app,
        db,
        keys,
        config,
    }
}

impl Env {
    /// A subscription Graph created with `graph_id`; its clientState.
    async fn subscription(&self, resource: &str, graph_id: &str) -> (String, String) {
        let store = self.db.store().await;
        let types = vec!["created".to_string(), "updated".into(), "deleted".into()];
        let row = subscriptions::declare(
            &store,
            &self.keys,
            &Desired {
                tenant_id: TENANT,
                resource,
                change_types: &types,
                origin: Origin::Cli,
                include_resource_data: false,
            },
        )
        .await
        .unwrap();
        subscriptions::record_created(&store, &row.id, graph_id, "c1", 4_102_444_800)
            .await
            .unwrap();
        let state = subscriptions::client_state(&store, &self.keys, &row.id)
            .await
            .unwrap();
        (row.id, state.to_string())
    }

    async fn post(&self, path: &str, content_type: &str, body: String) -> reqwest::Response {
        self.app
            .client
            .post(format!("http://{}{path}", self.app.public))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn queued(&self, kind: &str) -> Vec<String> {
        self.db
            .strings(&format!(
                "SELECT payload FROM jobs WHERE kind = '{kind}' ORDER BY created_at"
            ))
            .await
    }
}

async fn handshake_tokens_are_echoed_exactly_as_text(db: TestDb) {
    let env = env(db).await;
    let tokens = [
        "Validation: Testing client application reachability for subscription Request-Id: 5a8e6f2b-1d7a-4cbb-9b3c-2f0e1c7a9d41",
        "a+b c",
        "literal %2B stays",
        "<script>alert('x')</script>",
    ];
    for path in ["/webhooks/graph", "/webhooks/graph/lifecycle"] {
        for token in tokens {
            let mut url = url::Url::parse(&format!("http://{}{path}", env.app.public)).unwrap();
            // Graph sends the token form-encoded in the query string.
            url.query_pairs_mut().append_pair("validationToken", token);
            for method in [reqwest::Method::POST, reqwest::Method::GET] {
                let response = env
                    .app
                    .client
                    .request(method.clone(), url.clone())
                    .header("content-type", "text/plain; charset=utf-8")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{method} {path} {token}");
                let headers = response.headers().clone();
                assert!(headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/plain"));
                assert_eq!(headers["x-content-type-options"], "nosniff");
                assert_eq!(response.text().await.unwrap(), token);
            }
        }
    }
    assert!(env.queued("graph_notification").await.is_empty());
    env.app.stop().await.unwrap();
}

async fn microsofts_samples_are_accepted_and_a_redelivery_is_one_job(db: TestDb) {
    let env = env(db).await;
    let user = "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091";
    let (mail_id, mail_state) = env
        .subscription(
            &format!("users/{user}/messages"),
            "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        )
        .await;
    let basic = sample("01-basic-notification-message-created.json")
        .replace(
            "{subscription_guid}",
            "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        )
        .replace("secretClientValue", &mail_state)
        .replace("{user_guid}", user)
        .replace("{tenant_guid}", TENANT)
        .replace("{long_id_string}", "AAMkAGI2THVSAAA=");
    for _ in 0..5 {
        let response = env
            .post("/webhooks/graph", "application/json", basic.clone())
            .await;
        assert_eq!(response.status(), 202);
        assert!(response.text().await.unwrap().is_empty());
    }
    let queued = env.queued("graph_notification").await;
    assert_eq!(queued.len(), 1, "five deliveries of one change are one job");
    let job: serde_json::Value = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(job["subscription_id"], mail_id.as_str());
    assert_eq!(job["change_type"], "created");
    assert_eq!(job["tenant_id"], TENANT);
    assert_eq!(
        job["resource"],
        format!("users/{user}@{TENANT}/messages/AAMkAGI2THVSAAA=")
    );
    assert!(
        !queued[0].contains(&mail_state),
        "the clientState is not copied into the queue"
    );

    // Lifecycle samples: 05 as published (a real subscription id), 06 and 07 with their
    // placeholders filled; to the lifecycle URL and, as Graph does without one, to the
    // notification URL.
    let (_, events_state) = env
        .subscription(
            &format!("users/{user}/events"),
            "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b",
        )
        .await;
    let reauthorize = sample("05-lifecycle-reauthorizationRequired.json")
        .replace("{secret client state}", &events_state);
    let fill = |name: &str| {
        sample(name)
            .replace(
                "<subscription_guid>",
                "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b",
            )
            .replace("<tenant_guid>", TENANT)
            .replace("<secretClientState>", &events_state)
    };
    for (path, body) in [
        ("/webhooks/graph/lifecycle", reauthorize),
        (
            "/webhooks/graph/lifecycle",
            fill("06-lifecycle-subscriptionRemoved.json"),
        ),
        ("/webhooks/graph", fill("07-lifecycle-missed.json")),
    ] {
        let response = env.post(path, "application/json", body).await;
        assert_eq!(response.status(), 202, "{path}");
    }
    let events: Vec<String> = env
        .queued("graph_lifecycle")
        .await
        .iter()
        .map(|payload| {
            let job: serde_json::Value = serde_json::from_str(payload).unwrap();
            job["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        events,
        ["reauthorizationRequired", "subscriptionRemoved", "missed"]
    );
    env.app.stop().await.unwrap();
}

/// The listener's cache of subscription checks: ids the table does not have are never
/// remembered (a subscription created a moment ago is accepted at once), and an entry is read
/// again once its time is up (a deleted subscription stops being accepted).
async fn subscription_checks_are_cached_for_their_ttl_and_unknown_ids_never(db: TestDb) {
    let env = env(db).await;
    let store = env.db.store().await;
    let graph_id = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d";
    let long = subscriptions::CheckCache::with_ttl(
        store.clone(),
        env.keys.clone(),
        std::time::Duration::from_secs(3600),
    );
    let none = subscriptions::CheckCache::with_ttl(
        store.clone(),
        env.keys.clone(),
        std::time::Duration::ZERO,
    );
    assert!(long.get(&[graph_id]).await.unwrap().is_empty());
    let (id, state) = env.subscription("users/u9/messages", graph_id).await;
    let found = long.get(&[graph_id, graph_id]).await.unwrap();
    assert_eq!(found.len(), 1, "a new subscription is found at once");
    assert_eq!(found[graph_id].id, id);
    assert_eq!(found[graph_id].client_state.as_str(), state);
    assert_eq!(none.get(&[graph_id]).await.unwrap().len(), 1);
    subscriptions::forget(&store, &id).await.unwrap();
    assert_eq!(
        long.get(&[graph_id]).await.unwrap().len(),
        1,
        "within its time the entry is not read again"
    );
    assert!(
        none.get(&[graph_id]).await.unwrap().is_empty(),
        "once its time is up the deletion is seen"
    );
    env.app.stop().await.unwrap();
}

async fn forged_unknown_and_malformed_notifications_queue_nothing(db: TestDb) {
    let env = env(db).await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (_, state) = env.subscription("users/u1/messages", graph_id).await;
    let item = |subscription: &str, client_state: &str, tenant: &str| {
        serde_json::json!({"value": [{
            "subscriptionId": subscription,
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
            "clientState": client_state,
            "changeType": "created",
            "resource": "users/u1/messages/m1",
            "tenantId": tenant,
            "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "m1"}
        }]})
        .to_string()
    };
    let mut forged_state = state.clone();
    forged_state.replace_range(0..1, if state.starts_with('A') { "B" } else { "A" });
    let refused = [
        item(graph_id, &forged_state, TENANT),
        item(graph_id, "", TENANT),
        item("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a", &state, TENANT),
        item(graph_id, &state, "11111111-2222-4333-8444-555555555555"),
    ];
    let mut bodies = Vec::new();
    for body in refused {
        let response = env.post("/webhooks/graph", "application/json", body).await;
        // Well-formed but failing the checks: the same 202 as a good delivery, nothing
        // queued (docs/decisions/0011-webhook-answers.md: a non-2xx makes Graph redeliver
        // for 4 hours, and the answer must not tell a forger which check failed).
        assert_eq!(response.status(), 202);
        bodies.push(response.text().await.unwrap());
    }
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the answer does not tell which check failed"
    );
    let ok = item(graph_id, &state, TENANT);
    let response = env.post("/webhooks/graph", "text/plain", ok.clone()).await;
    assert_eq!(response.status(), 415);
    let response = env
        .post(
            "/webhooks/graph",
            "application/json",
            "{\"value\": [".into(),
        )
        .await;
    assert_eq!(response.status(), 400);
    let huge = format!(
        "{{\"value\": [], \"padding\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let response = env.post("/webhooks/graph", "application/json", huge).await;
    assert_eq!(response.status(), 413);
    assert!(env.queued("graph_notification").await.is_empty());
    // A batch with one good and one forged item: the good one is queued, the forged dropped.
    let mixed = serde_json::json!({"value": [
        serde_json::from_str::<serde_json::Value>(&ok).unwrap()["value"][0],
        serde_json::from_str::<serde_json::Value>(&item(graph_id, &forged_state, TENANT)).unwrap()["value"][0],
    ]});
    let response = env
        .post("/webhooks/graph", "application/json", mixed.to_string())
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(env.queued("graph_notification").await.len(), 1);
    env.app.stop().await.unwrap();
}

/// One notification item on `graph_id` with `fields` laid over a basic Outlook item.
fn outlook_item(graph_id: &str, client_state: &str, fields: serde_json::Value) -> String {
    let mut item = serde_json::json!({
        "subscriptionId": graph_id,
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": "Users/u1/Messages/m1",
        "tenantId": TENANT,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.etag": "W/\"CQAAABYAAAAx\"", "id": "m1"}
    });
    for (key, value) in fields.as_object().unwrap() {
        if value.is_null() {
            item.as_object_mut().unwrap().remove(key);
        } else {
            item[key] = value.clone();
        }
    }
    serde_json::json!({ "value": [item] }).to_string()
}

/// The forms Graph really sends an item in, each accepted as the same thing:
/// - the subscription id in upper case (a GUID; Graph's ids are not case-sensitive);
/// - no `tenantId` (OneDrive's notifications and older Outlook payloads carry none:
///   concepts/outlook-change-notifications-overview.md has none on its samples): the
///   subscription's tenant, proved by the clientState;
/// - `Created`/`Deleted` (the same document writes the change types capitalised).
///
/// An item whose `tenantId` is another tenant's is refused.
async fn graphs_variants_of_an_item_are_accepted_as_one_form(db: TestDb) {
    let env = env(db).await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (id, state) = env.subscription("users/u1/messages", graph_id).await;
    let post = |fields: serde_json::Value| {
        let body = outlook_item(graph_id, &state, fields);
        async { env.post("/webhooks/graph", "application/json", body).await }
    };
    let upper = post(serde_json::json!({
        "subscriptionId": graph_id.to_ascii_uppercase(),
        "resourceData": {"@odata.etag": "W/\"upper\"", "id": "m1"}
    }))
    .await;
    assert_eq!(upper.status(), 202);
    let tenantless = post(serde_json::json!({
        "tenantId": null,
        "resourceData": {"@odata.etag": "W/\"tenantless\"", "id": "m1"}
    }))
    .await;
    assert_eq!(tenantless.status(), 202);
    let capitalised = post(serde_json::json!({
        "changeType": "Deleted",
        "resourceData": {"@odata.etag": "W/\"deleted\"", "id": "m1"}
    }))
    .await;
    assert_eq!(capitalised.status(), 202);
    let queued: Vec<serde_json::Value> = env
        .queued("graph_notification")
        .await
        .iter()
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect();
    assert_eq!(queued.len(), 3, "{queued:?}");
    for job in &queued {
        assert_eq!(job["subscription_id"], id.as_str());
        assert_eq!(job["tenant_id"], TENANT, "the subscription's tenant");
    }
    assert_eq!(queued[2]["change_type"], "deleted");
    // A redelivery with the change type written the other way is the same job.
    let again = post(serde_json::json!({
        "changeType": "DELETED",
        "resourceData": {"@odata.etag": "W/\"deleted\"", "id": "m1"}
    }))
    .await;
    assert_eq!(again.status(), 202);
    assert_eq!(env.queued("graph_notification").await.len(), 3);
    // Another tenant's item: refused (202, nothing queued).
    let foreign = post(serde_json::json!({
        "tenantId": "11111111-2222-4333-8444-555555555555",
        "resourceData": {"@odata.etag": "W/\"foreign\"", "id": "m1"}
    }))
    .await;
    assert_eq!(foreign.status(), 202);
    assert_eq!(env.queued("graph_notification").await.len(), 3);
    env.app.stop().await.unwrap();
}

/// Graph redelivers a notification it did not see answered for up to 4 hours
/// (concepts/change-notifications-delivery-webhooks.md). A redelivery after the first job
/// finished, and after a restart, is still that one job; once the window closed, pruning
/// frees the key. A change Graph does not name (no etag, no notification id) cannot be told
/// from a second change, so after its job finished it is queued again (a second read of the
/// resource's current state, never a lost change).
async fn a_redelivery_after_the_first_job_finished_is_one_job_across_a_restart(db: TestDb) {
    let env = env(db).await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (_, state) = env.subscription("users/u1/messages", graph_id).await;
    let named = outlook_item(graph_id, &state, serde_json::json!({}));
    let unnamed = outlook_item(
        graph_id,
        &state,
        serde_json::json!({"resource": "Users/u1", "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": "u1"}}),
    );
    for body in [&named, &unnamed] {
        let answer = env
            .post("/webhooks/graph", "application/json", body.clone())
            .await;
        assert_eq!(answer.status(), 202);
    }
    assert_eq!(env.queued("graph_notification").await.len(), 2);
    // Both jobs finished (as a worker would have recorded them).
    let now = tenantd::clock::now_unix() * 1000;
    env.db
        .execute(&format!(
            "UPDATE jobs SET state = 'succeeded', finished_at = {now} WHERE kind = 'graph_notification'"
        ))
        .await;
    let Env {
        app, db, config, ..
    } = env;
    app.stop().await.unwrap();
    let app = spawn_app_with(config.clone()).await;
    let env = Env {
        app,
        db,
        keys: Arc::new(Keyring::load(&config.secrets.key_file).unwrap()),
        config,
    };
    for body in [&named, &unnamed] {
        let answer = env
            .post("/webhooks/graph", "application/json", body.clone())
            .await;
        assert_eq!(answer.status(), 202);
    }
    let states = env
        .db
        .strings("SELECT state FROM jobs WHERE kind = 'graph_notification' ORDER BY created_at")
        .await;
    assert_eq!(
        states,
        ["succeeded", "succeeded", "available"],
        "the named change stays one job; the unnamed one is read again"
    );
    // Pruning keeps the key while the window is open, whatever the retention...
    let queue = tenantd::queue::Queue::new(env.db.store().await);
    queue.prune(std::time::Duration::ZERO).await.unwrap();
    let kept = env
        .db
        .strings(
            "SELECT state FROM jobs WHERE kind = 'graph_notification' AND window_key IS NOT NULL",
        )
        .await;
    assert_eq!(kept, ["succeeded"]);
    // ...and frees it once the window closed.
    let window = i64::try_from(tenantd::queue::REDELIVERY_WINDOW.as_millis()).unwrap();
    env.db
        .execute(&format!(
            "UPDATE jobs SET created_at = created_at - {window} - 1000 WHERE window_key IS NOT NULL"
        ))
        .await;
    queue.prune(std::time::Duration::ZERO).await.unwrap();
    let answer = env
        .post("/webhooks/graph", "application/json", named.clone())
        .await;
    assert_eq!(answer.status(), 202);
    let fresh = env
        .db
        .strings(
            "SELECT state FROM jobs WHERE kind = 'graph_notification' AND window_key IS NOT NULL",
        )
        .await;
    assert_eq!(fresh, ["available"], "a new job once the window closed");
    env.app.stop().await.unwrap();
}

/// Graph gives an endpoint 3 s and counts answers after 2.9 s as slow
/// (concepts/change-notifications-delivery-webhooks.md, "Throttling"). With the database
/// unable to take the batch (another transaction holds the jobs table), a delivery gets a 503
/// with `Retry-After` after the 1 s deadline, never a 202; once the lock is gone, Graph's
/// redelivery of it is accepted and it is one job.
async fn a_database_that_cannot_take_the_batch_is_answered_503_in_time(db: TestDb) {
    let env = env(db).await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (_, state) = env.subscription("users/u1/messages", graph_id).await;
    let first = outlook_item(graph_id, &state, serde_json::json!({}));
    let answer = env.post("/webhooks/graph", "application/json", first).await;
    assert_eq!(answer.status(), 202);
    let second = outlook_item(
        graph_id,
        &state,
        serde_json::json!({"resourceData": {"@odata.etag": "W/\"second\"", "id": "m2"}}),
    );
    let lock = env.db.lock_jobs().await;
    let started = std::time::Instant::now();
    let answer = env
        .post("/webhooks/graph", "application/json", second.clone())
        .await;
    let took = started.elapsed();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "10");
    assert!(
        took < std::time::Duration::from_millis(2_900),
        "answered in {took:?}, past Graph's 2.9 s"
    );
    assert!(took >= tenantd::http::webhooks::ANSWER_DEADLINE, "{took:?}");
    lock.release().await;
    // Graph's redelivery.
    let mut accepted = false;
    for _ in 0..50 {
        let answer = env
            .post("/webhooks/graph", "application/json", second.clone())
            .await;
        if answer.status() == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(accepted, "accepted once the database takes writes again");
    let jobs = env
        .db
        .strings("SELECT payload FROM jobs WHERE kind = 'graph_notification' AND payload LIKE '%second%'")
        .await;
    assert_eq!(
        jobs.len(),
        1,
        "the 503'd delivery and its redelivery are one job"
    );
    env.app.stop().await.unwrap();
}

/// One address attacks the listener (bodies that never finish, a byte at a time, headers
/// that never finish, and a storm of connections opened and dropped) while a second address
/// posts real deliveries, as Graph would: at least 99% of those are answered 202 within 1 s.
/// The attacker holds more connections than the listener admits (300 against a cap of 200).
async fn real_deliveries_are_served_in_time_under_slow_clients_and_a_reconnect_storm(db: TestDb) {
    use tokio::io::AsyncWriteExt;
    let env = env_with(db, |config| {
        config.listener.max_connections = 200;
        config.listener.max_connections_per_peer = 200;
    })
    .await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (_, state) = env.subscription("users/u1/messages", graph_id).await;
    let target = env.app.public;
    let attacker = move || async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.connect(target).await
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attacks = tokio::task::JoinSet::new();
    for n in 0..300 {
        let stop = stop.clone();
        attacks.spawn(async move {
            let Ok(mut stream) = attacker().await else { return };
            let head: &[u8] = if n % 2 == 0 {
                b"POST /webhooks/graph HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            } else {
                b"POST /webhooks/graph HTTP/1.1\r\nHost: t\r\nContent-Ty"
            };
            let _ = stream.write_all(head).await;
            // A byte now and then until told to stop or cut off.
            while !stop.is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
    }
    {
        let stop = stop.clone();
        attacks.spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(stream) = attacker().await {
                    drop(stream);
                }
                tokio::task::yield_now().await;
            }
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let graph = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let mut in_time = 0;
    let total = 100;
    for n in 0..total {
        let body = outlook_item(
            graph_id,
            &state,
            serde_json::json!({"resourceData": {"@odata.etag": format!("W/\"real-{n}\""), "id": format!("m{n}")}}),
        );
        let started = std::time::Instant::now();
        let answer = graph
            .post(format!("http://{target}/webhooks/graph"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 202)
            && started.elapsed() < std::time::Duration::from_secs(1)
        {
            in_time += 1;
        }
    }
    stop.cancel();
    attacks.shutdown().await;
    eprintln!("{in_time} of {total} real deliveries answered 202 within 1 s under attack");
    assert!(
        in_time * 100 >= total * 99,
        "{in_time} of {total} real deliveries answered 202 within 1 s"
    );
    let queued = env
        .db
        .strings("SELECT id FROM jobs WHERE kind = 'graph_notification' AND payload LIKE '%real-%'")
        .await;
    assert!(queued.len() >= in_time, "every 202 is queued");
    env.app.stop().await.unwrap();
}

/// Reliability: PostgreSQL gone for 10 s under webhook load (a proxy between daemon and
/// server cut): every answer is a 202 or a 503, never a 202 without a commit; the daemon
/// recovers by itself once the database is back, and the 503'd deliveries, sent again as
/// Graph does, are all queued: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_answers_503s_and_loses_nothing() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let proxy = crate::helpers::CuttableProxy::in_front_of(&db).await;
    let proxied = proxy.url_for(&db);
    let env = env_with(db, |config| {
        config.database.url = tenantd::config::DatabaseUrl::new(proxied.clone());
    })
    .await;
    let graph_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let (_, state) = env.subscription("users/u1/messages", graph_id).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |n: usize| {
        let body = outlook_item(
            graph_id,
            &state,
            serde_json::json!({"resourceData": {"@odata.etag": format!("W/\"outage-{n}\""), "id": format!("m{n}")}}),
        );
        let client = client.clone();
        let url = format!("http://{}/webhooks/graph", env.app.public);
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|answer| answer.status().as_u16())
                .unwrap_or(0)
        }
    };
    let mut answers: Vec<(usize, u16)> = Vec::new();
    let started = std::time::Instant::now();
    let mut n = 0;
    let (mut cut_at, mut restored_at) = (None, None);
    while started.elapsed() < std::time::Duration::from_secs(16) {
        let elapsed = started.elapsed();
        if cut_at.is_none() && elapsed > std::time::Duration::from_secs(2) {
            proxy.cut();
            cut_at = Some(n);
        }
        if restored_at.is_none() && elapsed > std::time::Duration::from_secs(12) {
            proxy.restore();
            restored_at = Some(n);
        }
        answers.push((n, post(n).await));
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (cut_at, restored_at) = (cut_at.unwrap(), restored_at.unwrap());
    assert!(
        answers
            .iter()
            .all(|(_, status)| *status == 202 || *status == 503),
        "only 202 and 503: {:?}",
        answers
            .iter()
            .filter(|(_, s)| *s != 202 && *s != 503)
            .collect::<Vec<_>>()
    );
    assert!(
        answers[cut_at..restored_at].iter().any(|(_, s)| *s == 503),
        "the outage is answered 503"
    );
    assert!(
        answers[restored_at..].iter().any(|(_, s)| *s == 202),
        "recovered by itself once the database came back"
    );
    // Graph sends the 503'd ones again.
    for (n, status) in &answers {
        if *status == 503 {
            let mut accepted = false;
            for _ in 0..50 {
                if post(*n).await == 202 {
                    accepted = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert!(accepted, "redelivery {n} accepted");
        }
    }
    let queued = env
        .db
        .strings("SELECT payload FROM jobs WHERE kind = 'graph_notification' AND payload LIKE '%outage-%'")
        .await;
    assert_eq!(
        queued.len(),
        answers.len(),
        "every delivery is one job: nothing lost, none twice"
    );
    env.app.stop().await.unwrap();
}

/// Runs a new run of `job` (a one-at-a-time kind) to its end: the queue is run until empty
/// first, as a run already under way has read its rows, and a request made during it would be
/// folded into it (one reconcile at a time) and see nothing new.
async fn run_a_new_run<J: tenantd::jobs::Job>(
    app: &TestApp,
    queue: &tenantd::queue::Queue,
    job: &J,
) {
    app.run_queue_until_empty().await;
    let enqueued = tenantd::jobs::enqueue(queue, job).await.unwrap();
    assert!(
        matches!(enqueued, tenantd::queue::Enqueued::Created(_)),
        "a new run, not one folded into a run under way: {enqueued:?}"
    );
    app.run_queue_until_empty().await;
}

/// Waits up to 20 s for `sql` to return a row.
pub(crate) async fn eventually(db: &TestDb, sql: &str) -> Vec<String> {
    for _ in 0..200 {
        let rows = db.strings(sql).await;
        if !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing for `{sql}` within 20 s");
}

/// An app-only Graph token for the emulator's tenant, as a caller outside tenantd gets it.
pub(crate) async fn app_token(
    emulator: &graph_emulator::Emulator,
    client_id: &str,
    secret: &str,
) -> String {
    tenantd::vault::identity::IdentityClient::new(url::Url::parse(&emulator.base_url()).unwrap())
        .client_credentials(TENANT, client_id, secret, "https://graph.microsoft.com")
        .await
        .unwrap()
        .access_token
        .expose()
        .to_string()
}

/// Sends mail to user0 (the subscribed mailbox) as the app, through the emulator's `sendMail`.
pub(crate) async fn send_mail(
    emulator: &graph_emulator::Emulator,
    client_id: &str,
    secret: &str,
    from: &str,
    subject: &str,
) {
    let token = app_token(emulator, client_id, secret).await;
    let sent = reqwest::Client::new()
        .post(format!("{}/users/{from}/sendMail", emulator.graph_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"message": {"subject": subject, "body": {"contentType": "text", "content": "Hello"},
            "toRecipients": [{"emailAddress": {"address": "user0@contoso.onmicrosoft.com"}}]}, "saveToSentItems": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
}

/// The daemon with one configured subscription on a user's messages, an app connection to the
/// emulator, and Graph's subscription created.
pub(crate) struct Live {
    pub(crate) app: TestApp,
    pub(crate) emulator: graph_emulator::Emulator,
    pub(crate) client_id: String,
    pub(crate) secret: String,
    pub(crate) user_id: String,
    pub(crate) public_url: String,
    pub(crate) graph_id: String,
    /// The daemon's vault key file.
    pub(crate) key_file: std::path::PathBuf,
}

async fn live(db: &TestDb) -> Live {
    live_with(db, "messages", false).await
}

/// [`live`] subscribed to `users/{id}/{resource}` (such as `messages?$select=...` or
/// `mailFolders('Inbox')/messages`), with resource data or not.
pub(crate) async fn live_with(db: &TestDb, resource: &str, include_resource_data: bool) -> Live {
    let (emulator, client_id, secret) = crate::helpers::seeded_emulator(
        TENANT,
        1,
        &[
            "User.Read.All",
            "Mail.ReadWrite",
            "Mail.Send",
            "Calendars.ReadWrite",
        ],
    )
    .await;
    let user_id = crate::helpers::first_user_id(&emulator, TENANT);
    let mut config = test_config(db);
    let public_url = crate::helpers::public_listener_on_free_port(&mut config);
    config.graph.base_url = url::Url::parse(&emulator.graph_url()).unwrap();
    config.identity.authority = url::Url::parse(&emulator.base_url()).unwrap();
    config.subscriptions = vec![tenantd::config::SubscriptionConfig {
        tenant: TENANT.into(),
        resource: format!("users/{user_id}/{resource}"),
        change_types: vec!["created".into()],
        include_resource_data,
    }];
    let key_file = config.secrets.key_file.clone();
    let keys = Keyring::load(&key_file).unwrap();
    let store = db.store().await;
    store.migrate().await.unwrap();
    crate::helpers::default_app(&store, &keys, &emulator, TENANT, &client_id, &secret).await;
    let app = spawn_app_with(config).await;
    // Created at start through Graph's handshake against the daemon's own listener.
    let graph_id = eventually(
        db,
        "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id IS NOT NULL",
    )
    .await
    .remove(0);
    assert!(
        emulator.shared().counters()["validation_handshakes"] >= 2,
        "notification and lifecycle URLs both answered the handshake"
    );
    Live {
        app,
        emulator,
        client_id,
        secret,
        user_id,
        public_url,
        graph_id,
        key_file,
    }
}

async fn a_configured_subscription_is_created_and_a_new_message_ends_up_stored(db: TestDb) {
    let Live {
        app,
        emulator,
        client_id,
        secret,
        user_id,
        graph_id,
        ..
    } = live(&db).await;
    // A new message in the mailbox: Graph posts, the listener queues, a worker fetches it.
    send_mail(&emulator, &client_id, &secret, &user_id, "Welcome aboard").await;
    let stored = eventually(
        &db,
        "SELECT subject FROM messages WHERE deleted = 0 AND subject = 'Welcome aboard'",
    )
    .await;
    assert_eq!(stored, ["Welcome aboard"]);
    assert!(!graph_id.is_empty());
    app.stop().await.unwrap();
}

/// Every form Graph writes a mail notification in reaches the mailbox table: the emulator
/// sends them in turns (sample 01's `users/{id}@{tenant}/messages/{id}`, and the Outlook
/// overview's `Users/{id}/Messages/{id}` and rich `Users('{id}')/messages('{id}')`). A
/// resource tenantd cannot recognise is dead-lettered with the raw path in its message, not a
/// success; a type tenantd does not store (a Teams chat message) is counted `ignored`.
async fn every_documented_form_is_stored_and_the_unrecognised_dead_lettered(db: TestDb) {
    let live = live(&db).await;
    for subject in ["Form one", "Form two", "Form three"] {
        send_mail(
            &live.emulator,
            &live.client_id,
            &live.secret,
            &live.user_id,
            subject,
        )
        .await;
    }
    let stored = eventually(
        &db,
        "SELECT CAST(count(*) AS TEXT) FROM messages WHERE subject LIKE 'Form %' HAVING count(*) = 3",
    )
    .await;
    assert_eq!(stored, ["3"]);
    // A job's message is written before the job is marked done: run the queue to its end.
    live.app.run_queue_until_empty().await;
    let resources = db
        .strings(
            "SELECT payload FROM jobs WHERE kind = 'graph_notification' AND state = 'succeeded'",
        )
        .await
        .iter()
        .map(|payload| {
            let job: serde_json::Value = serde_json::from_str(payload).unwrap();
            job["resource"].as_str().unwrap().to_string()
        })
        .collect::<Vec<_>>();
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with("users/") && r.contains(&format!("@{TENANT}/messages/"))),
        "{resources:?}"
    );
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with("Users/") && r.contains("/Messages/")),
        "{resources:?}"
    );
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with("Users('") && r.contains("/messages('")),
        "{resources:?}"
    );

    let store = db.store().await;
    let subscription_id = db.strings("SELECT id FROM subscriptions").await.remove(0);
    let keys = Keyring::load(&live.key_file).unwrap();
    let state = subscriptions::client_state(&store, &keys, &subscription_id)
        .await
        .unwrap();
    for (resource, etag) in [
        ("Users/u1/Widgets/w1", "W/\"widget\""),
        (
            "chats('19:abc@thread.v2')/messages('1612289765949')",
            "W/\"chat\"",
        ),
    ] {
        let body = outlook_item(
            &live.graph_id,
            &state,
            serde_json::json!({"resource": resource, "resourceData": {"@odata.etag": etag, "id": "x"}}),
        );
        let answer = live
            .app
            .client
            .post(format!("{}/webhooks/graph", live.public_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    // Each 202 came after its job was written: the queue holds all of them.
    live.app.run_queue_until_empty().await;
    let failed = db
        .strings("SELECT last_reason || ' ' || last_message FROM jobs WHERE kind = 'graph_notification' AND state = 'failed'")
        .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("unrecognized_resource "),
        "{failed:?}"
    );
    assert!(
        failed[0].contains("Users/u1/Widgets/w1"),
        "the raw resource: {failed:?}"
    );
    assert_eq!(
        db.strings("SELECT id FROM jobs WHERE kind = 'graph_notification' AND state = 'succeeded' AND payload LIKE '%chats(%'")
            .await
            .len(),
        1
    );
    let metrics = live.app.get_admin("/metrics").await.text().await.unwrap();
    for (kind, outcome) in [
        ("chat_message", "ignored"),
        ("unknown", "unrecognized_resource"),
        ("message", "stored"),
    ] {
        assert!(
            metrics.lines().any(
                |line| line.starts_with("tenantd_notifications_processed_total{")
                    && line.contains(&format!("type=\"{kind}\""))
                    && line.contains(&format!("outcome=\"{outcome}\""))
            ),
            "{kind} {outcome} counted"
        );
    }
    live.app.stop().await.unwrap();
}

/// No orphans: a crash between Graph's 201 and the commit of its id leaves the row claimed
/// (`creating`) without an id while Graph has the subscription. The next create lists
/// Graph's subscriptions and adopts that one (same resource, URL and clientState) instead of
/// creating a second that would notify until it expired.
async fn a_subscription_created_before_a_crash_is_adopted_not_made_twice(db: TestDb) {
    let live = live(&db).await;
    // The state a crash right after Graph's 201 leaves: the claim, no id (and the claim old
    // enough for another attempt to take it).
    let old = tenantd::clock::now_unix() - 600;
    db.execute(&format!(
        "UPDATE subscriptions SET graph_id = NULL, expires_at = NULL, status = 'pending', reason = 'creating', updated_at = {old}"
    ))
    .await;
    // A second attempt had been interrupted the same way: a duplicate at Graph, shorter-lived.
    let duplicate = {
        let mut world = live.emulator.shared().world();
        let mut copy = world.subscriptions[&live.graph_id].clone();
        copy.id = "7e1f0c9a-8b3d-4a8e-9d2b-6b0a4d1e5c3f".into();
        copy.expiration -= time::Duration::hours(1);
        world.subscriptions.insert(copy.id.clone(), copy.clone());
        copy.id
    };
    let store = db.store().await;
    run_a_new_run(
        &live.app,
        &tenantd::queue::Queue::new(store.clone()),
        &tenantd::jobs::reconcile_subscriptions::ReconcileSubscriptions {
            public_url: Some(live.public_url.clone()),
        },
    )
    .await;
    let adopted = db
        .strings(
            "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id IS NOT NULL",
        )
        .await;
    assert_eq!(
        adopted[..],
        [live.graph_id.as_str()],
        "the subscription Graph made is adopted"
    );
    for _ in 0..50 {
        if !live
            .emulator
            .shared()
            .world()
            .subscriptions
            .contains_key(&duplicate)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        live.emulator.shared().subscription_ids(),
        std::collections::BTreeSet::from([live.graph_id.clone()]),
        "no second subscription at Graph: the duplicate is deleted"
    );
    // And it delivers to the adopted row.
    send_mail(
        &live.emulator,
        &live.client_id,
        &live.secret,
        &live.user_id,
        "After adoption",
    )
    .await;
    eventually(
        &db,
        "SELECT subject FROM messages WHERE subject = 'After adoption'",
    )
    .await;
    live.app.stop().await.unwrap();
}

/// No orphans left behind either: a subscription at Graph for our notification URL that no row
/// knows (a create whose answer was lost, its row since unwanted) is deleted by the sweep that
/// runs at start-up and every six hours; ours and another deployment's stay. While a create is
/// in flight (its row `creating`, no id yet) a subscription of its resource is left alone: it
/// may be the one that create is making.
async fn the_sweep_deletes_orphans_at_graph_and_nothing_else(db: TestDb) {
    let live = live(&db).await;
    let succeeded =
        "SELECT id FROM jobs WHERE kind = 'sweep_subscriptions' AND state = 'succeeded'";
    // The start-up sweep found nothing to delete.
    eventually(&db, succeeded).await;
    assert_eq!(live.emulator.shared().world().subscriptions.len(), 1);
    let (orphan, foreign) = {
        let mut world = live.emulator.shared().world();
        let mut orphan = world.subscriptions[&live.graph_id].clone();
        orphan.id = "0b5d7c2e-1f3a-4c6b-8e9d-2a4f6c8e0b1d".into();
        let mut foreign = orphan.clone();
        foreign.id = "5c9e1a3f-7b2d-4e6a-9c8b-1d3f5a7c9e2b".into();
        foreign.notification_url = "https://elsewhere.example.com/webhooks/graph".into();
        world
            .subscriptions
            .insert(orphan.id.clone(), orphan.clone());
        world
            .subscriptions
            .insert(foreign.id.clone(), foreign.clone());
        (orphan.id, foreign.id)
    };
    let store = db.store().await;
    let queue = tenantd::queue::Queue::new(store.clone());
    let sweep = || async {
        let before = db.strings(succeeded).await.len();
        run_a_new_run(
            &live.app,
            &queue,
            &tenantd::jobs::sweep_subscriptions::SweepSubscriptions {},
        )
        .await;
        assert!(
            db.strings(succeeded).await.len() > before,
            "the sweep ran and succeeded"
        );
    };
    // The metrics recorder is one per test process: compare with the count before.
    let deleted = || async {
        let metrics = live.app.get_admin("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find(|line| {
                line.starts_with("tenantd_subscription_renewals_total{")
                    && line.contains("result=\"orphan_deleted\"")
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deleted_before = deleted().await;
    sweep().await;
    let left = live.emulator.shared().subscription_ids();
    let expected = std::collections::BTreeSet::from([live.graph_id.clone(), foreign.clone()]);
    assert_eq!(
        left, expected,
        "the orphan {orphan} is deleted, ours and the foreign one stay"
    );
    assert!(deleted().await > deleted_before, "the deletion is counted");
    // A create in flight: the row claimed just now, Graph's answer not yet recorded.
    let now = tenantd::clock::now_unix();
    db.execute(&format!(
        "UPDATE subscriptions SET graph_id = NULL, reason = 'creating', updated_at = {now}"
    ))
    .await;
    sweep().await;
    assert!(
        live.emulator
            .shared()
            .world()
            .subscriptions
            .contains_key(&live.graph_id),
        "what a create in flight may be making is not swept"
    );
    live.app.stop().await.unwrap();
}

/// Events are fetched, not stored: the worker confirms the change at Graph (one GET of the
/// changed event) and the job succeeds.
async fn an_event_notification_is_fetched_from_graph(db: TestDb) {
    let Live {
        app,
        emulator,
        client_id,
        secret,
        user_id,
        ..
    } = live_with(&db, "events", false).await;
    let token = app_token(&emulator, &client_id, &secret).await;
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/users/{user_id}/events", emulator.graph_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"subject": "Planning",
            "start": {"dateTime": "2026-12-03T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-03T09:30:00", "timeZone": "UTC"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event_id = created["id"].as_str().unwrap().to_string();
    eventually(
        &db,
        "SELECT id FROM jobs WHERE kind = 'graph_notification' AND state = 'succeeded'",
    )
    .await;
    let fetches: Vec<u16> = emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/events/{event_id}")))
        .map(|r| r.status)
        .collect();
    assert_eq!(fetches, [200], "the changed event was fetched once");
    assert_eq!(
        db.strings(
            "SELECT id FROM jobs WHERE kind = 'graph_notification' AND state <> 'succeeded'"
        )
        .await
        .len(),
        0
    );
    app.stop().await.unwrap();
}

/// A subscription sealed with a key the daemon does not hold (created by a CLI run with
/// another key file) is a vault failure with its true reason on the row, not a database one,
/// and the reconcile itself succeeds instead of being retried as if the database were down.
async fn a_client_state_sealed_with_another_key_is_a_vault_failure_on_its_row(db: TestDb) {
    let live = live(&db).await;
    let store = db.store().await;
    let other_keys = Keyring::parse(
        std::path::Path::new("other"),
        &Keyring::new_key_line("other-key"),
    )
    .unwrap();
    let changes = vec!["created".to_string()];
    let foreign = subscriptions::declare(
        &store,
        &other_keys,
        &Desired {
            tenant_id: TENANT,
            resource: &format!("users/{}/events", live.user_id),
            change_types: &changes,
            origin: Origin::Cli,
            include_resource_data: false,
        },
    )
    .await
    .unwrap();
    let queue = tenantd::queue::Queue::new(store.clone());
    let reconcile = tenantd::jobs::reconcile_subscriptions::ReconcileSubscriptions {
        public_url: Some(live.public_url.clone()),
    };
    run_a_new_run(&live.app, &queue, &reconcile).await;
    let row = db
        .strings(&format!(
            "SELECT status || ' ' || reason FROM subscriptions WHERE id = '{}'",
            foreign.id
        ))
        .await;
    assert_eq!(row, ["failed vault_key_missing"]);
    let reconciles = db
        .strings("SELECT state || ' ' || COALESCE(last_reason, '-') FROM jobs WHERE kind = 'reconcile_subscriptions' ORDER BY created_at DESC")
        .await;
    assert_eq!(reconciles[0], "succeeded -", "{reconciles:?}");
    // The subscription with the daemon's own key is untouched.
    assert_eq!(
        db.strings("SELECT status FROM subscriptions WHERE graph_id IS NOT NULL")
            .await,
        ["active"]
    );
    // The operator's `tenant check` shows the subscription and its reason.
    let checked = crate::helpers::tenantd_command()
        .env("TENANTD_DATABASE__URL", db.url())
        .env("TENANTD_SECRETS__KEY_FILE", &live.key_file)
        .env("TENANTD_IDENTITY__AUTHORITY", live.emulator.base_url())
        .args(["tenant", "check", "--tenant", TENANT])
        .output()
        .unwrap();
    let text = crate::helpers::combined_output(&checked);
    assert!(
        text.contains(&format!(
            "subscription {} users/{}/events: failed (vault_key_missing)",
            foreign.id, live.user_id
        )),
        "{text}"
    );
    live.app.stop().await.unwrap();
}

async fn subscriptions_are_renewed_before_expiry_and_recreated_when_graph_lost_them(db: TestDb) {
    let live = live(&db).await;
    let store = db.store().await;
    let queue = tenantd::queue::Queue::new(store.clone());
    let reconcile = tenantd::jobs::reconcile_subscriptions::ReconcileSubscriptions {
        public_url: Some(live.public_url.clone()),
    };
    let now = tenantd::clock::now_unix();
    // Due: an hour left (a week's subscription renews in its last quarter).
    db.execute(&format!(
        "UPDATE subscriptions SET expires_at = {}, last_renewed_at = 0",
        now + 3600
    ))
    .await;
    run_a_new_run(&live.app, &queue, &reconcile).await;
    let renewed = db
        .strings(&format!(
            "SELECT graph_id FROM subscriptions WHERE last_renewed_at > 0 AND expires_at > {}",
            now + 6 * 24 * 3600
        ))
        .await;
    assert_eq!(
        renewed,
        std::slice::from_ref(&live.graph_id),
        "renewed in place, same id"
    );
    // Not due: nothing happens to a subscription with days left.
    assert!(!tenantd::subscriptions::renewal_due(
        now + 6 * 24 * 3600,
        now,
        tenantd::subscriptions::max_lifetime("users/u/messages", false)
    ));
    // Graph lost it (expired, removed): the renewal gets 404 and it is created again.
    live.emulator
        .shared()
        .world()
        .subscriptions
        .remove(&live.graph_id);
    db.execute(&format!(
        "UPDATE subscriptions SET expires_at = {}",
        now + 3600
    ))
    .await;
    run_a_new_run(&live.app, &queue, &reconcile).await;
    let recreated = db
        .strings(&format!(
            "SELECT graph_id FROM subscriptions WHERE status = 'active' AND graph_id <> '{}'",
            live.graph_id
        ))
        .await;
    assert!(live
        .emulator
        .shared()
        .world()
        .subscriptions
        .contains_key(&recreated[0]));
    live.app.stop().await.unwrap();
}

async fn the_subscription_commands_want_list_and_unwant(db: TestDb) {
    let keys = crate::helpers::test_key_file();
    let run = |args: &[&str]| {
        let output = crate::helpers::tenantd_command()
            .args(["--database-url", db.url(), "subscription"])
            .args(args)
            .env("TENANTD_SECRETS__KEY_FILE", &keys)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&[
        "create",
        "--tenant",
        TENANT,
        "--resource",
        "users/u1/messages",
        "--change-types",
        "created,updated",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("listener.public_url"),
        "warns that Graph needs it: {err}"
    );
    let (code, out, _) = run(&["list", "--json"]);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed[0]["resource"], "users/u1/messages");
    assert_eq!(listed[0]["change_types"], "created,updated");
    assert_eq!(listed[0]["status"], "pending");
    assert!(
        listed[0].get("client_state").is_none(),
        "the clientState is never listed"
    );
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let (code, _, err) = run(&[
        "create",
        "--tenant",
        "contoso.com",
        "--resource",
        "users/u1/messages",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("Entra tenant ID"), "{err}");
    assert_eq!(run(&["delete", &id]).0, Some(0));
    let (_, out, _) = run(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed[0]["wanted"], false);
    assert_eq!(run(&["delete", "nope"]).0, Some(2));
}

async fn a_notification_answered_202_survives_a_kill_right_after(db: TestDb) {
    let key_file = crate::helpers::test_key_file();
    let keys = Keyring::load(&key_file).unwrap();
    let store = db.store().await;
    store.migrate().await.unwrap();
    let types = vec!["created".to_string()];
    let row = subscriptions::declare(
        &store,
        &keys,
        &Desired {
            tenant_id: TENANT,
            resource: "users/u1/messages",
            change_types: &types,
            origin: Origin::Cli,
            include_resource_data: false,
        },
    )
    .await
    .unwrap();
    subscriptions::record_created(&store, &row.id, "g-kill", "c1", 4_102_444_800)
        .await
        .unwrap();
    let state = subscriptions::client_state(&store, &keys, &row.id)
        .await
        .unwrap()
        .to_string();
    let mut command = crate::helpers::tenantd_command();
    command
        .env("TENANTD_DATABASE__URL", db.url())
        .env("TENANTD_SECRETS__KEY_FILE", &key_file)
        .env("TENANTD_QUEUE__WORKERS", "0");
    let mut daemon = crate::helpers::Daemon::run(command);
    let (_, public) = tokio::task::block_in_place(|| daemon.wait_until_running());
    let body = serde_json::json!({"value": [{
        "subscriptionId": "g-kill",
        "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z",
        "clientState": state,
        "changeType": "created",
        "resource": "users/u1/messages/m-kill",
        "tenantId": TENANT,
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "@odata.etag": "W/\"1\"", "id": "m-kill"}
    }]});
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{public}/webhooks/graph"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Killed the moment the answer arrived: no graceful stop, no flush.
    daemon.signal("KILL");
    tokio::task::block_in_place(|| daemon.wait_exit(std::time::Duration::from_secs(10)));
    let queued = db
        .strings("SELECT payload FROM jobs WHERE kind = 'graph_notification'")
        .await;
    assert_eq!(queued.len(), 1, "acknowledged means committed");
    assert!(queued[0].contains("m-kill"));
}

on_both_backends!(
    handshake_tokens_are_echoed_exactly_as_text,
    a_notification_answered_202_survives_a_kill_right_after,
    the_subscription_commands_want_list_and_unwant,
    subscriptions_are_renewed_before_expiry_and_recreated_when_graph_lost_them,
    a_client_state_sealed_with_another_key_is_a_vault_failure_on_its_row,
    a_configured_subscription_is_created_and_a_new_message_ends_up_stored,
    a_subscription_created_before_a_crash_is_adopted_not_made_twice,
    the_sweep_deletes_orphans_at_graph_and_nothing_else,
    an_event_notification_is_fetched_from_graph,
    microsofts_samples_are_accepted_and_a_redelivery_is_one_job,
    forged_unknown_and_malformed_notifications_queue_nothing,
    graphs_variants_of_an_item_are_accepted_as_one_form,
    a_database_that_cannot_take_the_batch_is_answered_503_in_time,
    real_deliveries_are_served_in_time_under_slow_clients_and_a_reconnect_storm,
    every_documented_form_is_stored_and_the_unrecognised_dead_lettered,
    a_redelivery_after_the_first_job_finished_is_one_job_across_a_restart,
    subscription_checks_are_cached_for_their_ttl_and_unknown_ids_never,
);
