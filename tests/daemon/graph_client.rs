//! The Graph client against the emulator: typed requests and paging, Retry-After within the
//! budget, hand-back past it, mailbox concurrency, `$batch` with throttled items, transient
//! faults. On both databases (tokens come from the vault).

use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_emulator::throttle::{Budgets, Faults};
use graph_emulator::Emulator;
use reqwest::Method;
use tenantd::config::GraphConfig;
use tenantd::graph::{GraphClient, GraphError, GraphRequest};
use tenantd::jobs::JobError;
use tenantd::vault::connections::Connection;
use tenantd::vault::tokens::TokenService;

use crate::helpers::TestDb;
use crate::on_both_backends;

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

struct Env {
    emulator: Emulator,
    connection: Connection,
    tokens: Arc<TokenService>,
}

async fn env(db: &TestDb, users: usize) -> Env {
    let (emulator, client_id, secret) = crate::helpers::seeded_emulator(
        TENANT,
        users,
        &[
            "User.ReadWrite.All",
            "Organization.Read.All",
            "Mail.ReadWrite",
            "Mail.Send",
            "Files.ReadWrite.All",
        ],
    )
    .await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let (connection, tokens) =
        crate::helpers::connect_app(&store, &emulator, TENANT, &client_id, &secret).await;
    Env {
        emulator,
        connection,
        tokens,
    }
}

impl Env {
    fn client(&self, tweak: impl FnOnce(&mut GraphConfig)) -> GraphClient {
        let mut config = GraphConfig {
            base_url: url::Url::parse(&self.emulator.graph_url()).unwrap(),
            ..GraphConfig::default()
        };
        tweak(&mut config);
        GraphClient::new(&config, self.tokens.clone())
    }

    fn counter(&self, name: &str) -> u64 {
        self.emulator
            .shared()
            .counters()
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

async fn typed_requests_page_through_collections(db: TestDb) {
    let env = env(&db, 25).await;
    let client = env.client(|_| {});
    let users = client.list_users(&env.connection, 10).await.unwrap();
    assert_eq!(users.len(), 25, "three pages followed");
    let found = client
        .find_user_by_upn(&env.connection, "user7@contoso.onmicrosoft.com")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found["userPrincipalName"], "user7@contoso.onmicrosoft.com");
    assert!(client
        .find_user_by_upn(&env.connection, "nobody@contoso.onmicrosoft.com")
        .await
        .unwrap()
        .is_none());
    let missing = client
        .get_user(&env.connection, "nobody@contoso.onmicrosoft.com")
        .await
        .unwrap_err();
    assert_eq!(missing.reason_code(), "not_found");
    assert!(matches!(
        JobError::from(missing),
        JobError::Permanent { .. }
    ));
    let skus = client.subscribed_skus(&env.connection).await.unwrap();
    assert_eq!(skus[0]["skuPartNumber"], "ENTERPRISEPACK");
    client.send_mail(&env.connection, "user0@contoso.onmicrosoft.com", &serde_json::json!({"subject": "hi", "toRecipients": [{"emailAddress": {"address": "user0@contoso.onmicrosoft.com"}}]}), true).await.unwrap();
    assert_eq!(
        client
            .list_messages(&env.connection, "user0@contoso.onmicrosoft.com")
            .await
            .unwrap()
            .len(),
        2,
        "inbox and sent items"
    );
}

async fn retry_after_is_honoured_inside_the_budget(db: TestDb) {
    let env = env(&db, 1).await;
    env.emulator.shared().throttle.set_budgets(Budgets {
        requests_per_window: 2,
        window_seconds: 1,
        mailbox_concurrency: 4,
        ..Budgets::default()
    });
    let client = env.client(|_| {});
    let started = Instant::now();
    for _ in 0..5 {
        client
            .get_user(&env.connection, "user0@contoso.onmicrosoft.com")
            .await
            .unwrap();
    }
    assert!(env.counter("throttled") >= 1, "the emulator throttled");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the client waited for Retry-After"
    );
    assert!(
        client.limits().pace(TENANT, "identity").rate() < tenantd::graph::limits::START_RATE,
        "the tenant's identity pace came down after the 429"
    );
}

async fn past_the_budget_the_wait_goes_back_to_the_queue(db: TestDb) {
    let env = env(&db, 1).await;
    env.emulator.shared().throttle.set_budgets(Budgets {
        requests_per_window: 1,
        window_seconds: 60,
        mailbox_concurrency: 4,
        ..Budgets::default()
    });
    let client = env.client(|config| config.retry_budget_seconds = 5);
    client
        .get_user(&env.connection, "user0@contoso.onmicrosoft.com")
        .await
        .unwrap();
    let started = Instant::now();
    let err = client
        .get_user(&env.connection, "user0@contoso.onmicrosoft.com")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no worker sleeps on a long wait"
    );
    let GraphError::Throttled { retry_after, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(*retry_after > Duration::from_secs(50), "{retry_after:?}");
    match JobError::from(err) {
        JobError::Retry { reason, after, .. } => {
            assert_eq!(reason, "throttled");
            assert!(after.unwrap() > Duration::from_secs(50));
        }
        other => panic!("{other:?}"),
    }
}

async fn a_mailbox_never_sees_more_than_four_requests_at_once(db: TestDb) {
    let env = env(&db, 1).await;
    env.emulator.shared().throttle.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let client = Arc::new(env.client(|_| {}));
    let calls = (0..8).map(|_| {
        let (client, connection) = (client.clone(), env.connection.clone());
        tokio::spawn(async move {
            client
                .list_messages(&connection, "user0@contoso.onmicrosoft.com")
                .await
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        env.counter("throttled"),
        0,
        "the client kept within Outlook's 4 concurrent requests"
    );
}

async fn batches_retry_their_throttled_items(db: TestDb) {
    let env = env(&db, 3).await;
    env.emulator.shared().throttle.set_budgets(Budgets {
        requests_per_window: 10,
        window_seconds: 1,
        mailbox_concurrency: 4,
        ..Budgets::default()
    });
    let client = env.client(|_| {});
    let requests: Vec<GraphRequest> = (0..25)
        .map(|n| {
            GraphRequest::new(
                Method::GET,
                format!("/users/user{}@contoso.onmicrosoft.com", n % 3),
                "users",
            )
        })
        .collect();
    let results = client.batch(&env.connection, &requests).await.unwrap();
    assert_eq!(results.len(), 25);
    assert!(
        results
            .iter()
            .all(|(status, body)| *status == 200 && body["id"].is_string()),
        "{results:?}"
    );
    assert!(
        env.counter("throttled") >= 1,
        "some items were throttled and retried"
    );
}

async fn transient_failures_are_retried_then_reported(db: TestDb) {
    let env = env(&db, 1).await;
    let client = env.client(|config| config.max_retries = 2);
    env.emulator.shared().throttle.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![503],
        ..Faults::default()
    });
    let err = client
        .get_user(&env.connection, "user0@contoso.onmicrosoft.com")
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "transient");
    assert!(matches!(JobError::from(err), JobError::Retry { .. }));
    assert_eq!(env.counter("faults_errors"), 3, "one try and two retries");
    env.emulator.shared().throttle.set_faults(Faults {
        seed: 9,
        error_rate: 0.5,
        error_statuses: vec![500, 503, 504],
        ..Faults::default()
    });
    let client = env.client(|config| config.max_retries = 8);
    for _ in 0..5 {
        client
            .get_user(&env.connection, "user0@contoso.onmicrosoft.com")
            .await
            .unwrap();
    }
}

async fn large_files_go_through_an_upload_session_in_fragments(db: TestDb) {
    use tenantd::graph::requests::{SIMPLE_UPLOAD_MAX, UPLOAD_FRAGMENT};
    let env = env(&db, 1).await;
    let client = env.client(|_| {});
    let throttle = &env.emulator.shared().throttle;
    throttle.clear_requests();
    let size = 2 * UPLOAD_FRAGMENT + 12_345;
    assert!(size > SIMPLE_UPLOAD_MAX);
    let content: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let item = client
        .upload_file(
            &env.connection,
            "user0@contoso.onmicrosoft.com",
            "Heartbeat/Sales export 1.csv",
            content,
            "text/csv",
        )
        .await
        .unwrap();
    assert_eq!(item["size"], serde_json::json!(size));
    assert_eq!(
        item["name"], "Sales export 1.csv",
        "spaces percent-encoded, not '+'"
    );
    assert_eq!(item["parentReference"]["path"], "/drive/root:/Heartbeat");
    let small = client
        .upload_file(
            &env.connection,
            "user0@contoso.onmicrosoft.com",
            "Heartbeat/notes.txt",
            b"hello".to_vec(),
            "text/plain",
        )
        .await
        .unwrap();
    assert_eq!(small["size"], serde_json::json!(5));
    let log: Vec<(String, String, u16)> = throttle
        .requests()
        .into_iter()
        .filter(|r| !r.path.contains("/oauth2/"))
        .map(|r| (r.method, r.path, r.status))
        .collect();
    let sessions = log
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.ends_with(":/createUploadSession"))
        .count();
    let fragments: Vec<u16> = log
        .iter()
        .filter(|(m, p, _)| m == "PUT" && p.starts_with("/_upload/"))
        .map(|(_, _, status)| *status)
        .collect();
    assert_eq!(sessions, 1, "{log:?}");
    // The upload URL refuses a bearer token: these succeeding shows none was sent.
    assert_eq!(fragments, [202, 202, 201], "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|(m, p, _)| m == "PUT" && p.ends_with(":/content"))
            .count(),
        1,
        "the small file is a simple upload: {log:?}"
    );
    // The same path again replaces the item rather than adding one.
    let again = client
        .upload_file(
            &env.connection,
            "user0@contoso.onmicrosoft.com",
            "Heartbeat/Sales export 1.csv",
            vec![7u8; size],
            "text/csv",
        )
        .await
        .unwrap();
    assert_eq!(again["id"], item["id"]);
}

async fn a_notified_message_is_fetched_and_stored_once_and_a_delete_marks_it(db: TestDb) {
    use tenantd::jobs::graph_notification::GraphNotification;
    use tenantd::jobs::Job;
    let env = env(&db, 1).await;
    let client = Arc::new(env.client(|_| {}));
    let upn = "user0@contoso.onmicrosoft.com";
    client
        .send_mail(
            &env.connection,
            upn,
            &serde_json::json!({"subject": "Quarterly numbers", "body": {"contentType": "text", "content": "See the attached figures."},
                "toRecipients": [{"emailAddress": {"address": upn}}]}),
            false,
        )
        .await
        .unwrap();
    let user_id = client.get_user(&env.connection, upn).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let message = client
        .list_messages(&env.connection, upn)
        .await
        .unwrap()
        .remove(0);
    let message_id = message["id"].as_str().unwrap().to_string();
    let store = db.store().await;
    let keys = tenantd::vault::Keyring::parse(
        std::path::Path::new("k"),
        &tenantd::vault::Keyring::new_key_line("k1"),
    )
    .unwrap();
    let types = vec!["created".to_string()];
    let subscription = tenantd::subscriptions::declare(
        &store,
        &keys,
        &tenantd::subscriptions::Desired {
            tenant_id: TENANT,
            resource: &format!("users/{user_id}/messages"),
            change_types: &types,
            origin: tenantd::subscriptions::Origin::Cli,
            include_resource_data: false,
        },
    )
    .await
    .unwrap();
    tenantd::subscriptions::record_created(
        &store,
        &subscription.id,
        "g1",
        &env.connection.id,
        4_102_444_800,
    )
    .await
    .unwrap();
    let context = tenantd::jobs::JobContext {
        attempt: 1,
        public_url: None,
        graph: client.clone(),
        ..crate::helpers::job_context(&store, env.tokens.clone())
    };
    let notification = |change_type: &str| GraphNotification {
        subscription_id: subscription.id.clone(),
        tenant_id: TENANT.into(),
        change_type: change_type.into(),
        // Graph's form: `{user id}@{tenant id}`.
        resource: format!("users/{user_id}@{TENANT}/messages/{message_id}"),
        resource_id: Some(message_id.clone()),
        odata_type: Some("#Microsoft.Graph.Message".into()),
        etag: None,
        content: None,
    };
    for _ in 0..2 {
        notification("created").run(context.clone()).await.unwrap();
    }
    let rows = db
        .strings("SELECT subject || '|' || from_address || '|' || COALESCE(internet_message_id, '') || '|' || user_id FROM messages WHERE deleted = 0")
        .await;
    assert_eq!(rows.len(), 1, "processed twice, stored once: {rows:?}");
    let fields: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(fields[0], "Quarterly numbers");
    assert_eq!(fields[1], upn);
    assert!(!fields[2].is_empty(), "internetMessageId stored");
    assert_eq!(fields[3], user_id);
    notification("deleted").run(context.clone()).await.unwrap();
    assert_eq!(
        db.strings("SELECT message_id FROM messages WHERE deleted = 1")
            .await,
        std::slice::from_ref(&message_id)
    );
}

on_both_backends!(
    typed_requests_page_through_collections,
    a_notified_message_is_fetched_and_stored_once_and_a_delete_marks_it,
    retry_after_is_honoured_inside_the_budget,
    past_the_budget_the_wait_goes_back_to_the_queue,
    a_mailbox_never_sees_more_than_four_requests_at_once,
    batches_retry_their_throttled_items,
    transient_failures_are_retried_then_reported,
    large_files_go_through_an_upload_session_in_fragments,
);
