//! Budgets, mailbox concurrency, throttling inside batches, injected faults and the request log.

use serde_json::{json, Value};

use crate::helpers::{assert_conforms, Env};

#[tokio::test]
async fn over_budget_answers_429_with_retry_after_and_recovers() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    env.control_put(
        "/budgets",
        json!({"requestsPerWindow": 3, "windowSeconds": 1}),
    )
    .await
    .assert_status(204);
    for _ in 0..3 {
        env.get("/users", &token).await.assert_status(200);
    }
    let throttled = env.get("/users", &token).await.assert_status(429);
    assert_conforms("13-throttled-429-response-body.json", &throttled.json);
    let retry_after: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=1).contains(&retry_after));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    env.get("/users", &token).await.assert_status(200);
    assert!(
        env.control_get("/counters").await["throttled"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn a_mailbox_takes_four_concurrent_requests_per_app() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    env.control_put("/faults", json!({"latencyMs": 1000}))
        .await
        .assert_status(204);
    let path = format!("/users/{adele}/messages");
    let calls = (0..8).map(|_| env.get(&path, &token));
    let answers = futures_join(calls).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let throttled: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(
        ok,
        4,
        "statuses: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(throttled.len(), 4);
    assert_eq!(throttled[0].json["error"]["code"], "ApplicationThrottled");
    assert!(throttled[0].header("retry-after").is_some());
}

async fn futures_join<F: std::future::Future<Output = crate::helpers::Answer>>(
    futures: impl Iterator<Item = F>,
) -> Vec<crate::helpers::Answer> {
    let mut set = Vec::new();
    for future in futures {
        set.push(future);
    }
    let mut out = Vec::new();
    let joined = futures_all(set).await;
    out.extend(joined);
    out
}

async fn futures_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    // Poll every future concurrently on this task without an extra dependency.
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *slot = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.expect("ready")).collect()
}

#[tokio::test]
async fn batch_items_are_throttled_one_by_one() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    env.control_put(
        "/budgets",
        json!({"requestsPerWindow": 2, "windowSeconds": 60}),
    )
    .await
    .assert_status(204);
    let requests: Vec<Value> = (1..=4)
        .map(|n| json!({"id": n.to_string(), "method": "GET", "url": "/users"}))
        .collect();
    let batch = env
        .post("/$batch", &token, json!({"requests": requests}))
        .await
        .assert_status(200);
    let responses = batch.json["responses"].as_array().unwrap();
    let throttled: Vec<&Value> = responses.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(throttled.len(), 2, "{responses:?}");
    assert!(throttled[0]["headers"]["Retry-After"].is_string());
    assert_eq!(throttled[0]["body"]["error"]["code"], "TooManyRequests");
}

#[tokio::test]
async fn faults_inject_errors_and_dropped_connections_reproducibly() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    env.control_put("/faults", json!({"errorRate": 1.0, "errorStatuses": [503]}))
        .await
        .assert_status(204);
    let unavailable = env.get("/users", &token).await.assert_status(503);
    assert_eq!(unavailable.json["error"]["code"], "serviceNotAvailable");
    assert_eq!(unavailable.header("retry-after").as_deref(), Some("1"));

    env.control_put("/faults", json!({"dropRate": 1.0}))
        .await
        .assert_status(204);
    let dropped = env
        .http
        .get(format!("{}/users", env.emulator.graph_url()))
        .bearer_auth(&token)
        .send()
        .await;
    let failed = match dropped {
        Err(_) => true,
        Ok(response) => response.text().await.is_err(),
    };
    assert!(failed, "a dropped connection yields no complete answer");

    let run = || async {
        env.control_put(
            "/faults",
            json!({"seed": 42, "errorRate": 0.5, "errorStatuses": [500, 503, 504]}),
        )
        .await
        .assert_status(204);
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(env.get("/users", &token).await.status);
        }
        statuses
    };
    let first = run().await;
    let second = run().await;
    assert_eq!(first, second, "the same seed replays the same faults");
    assert!(first.contains(&200) && first.iter().any(|s| *s >= 500));
    env.control_put("/faults", json!({"errorRate": 2.0}))
        .await
        .assert_status(400);

    let log = env.control_get("/requests").await;
    let last = log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/v1.0/users");
    assert!(last["status"].as_u64().is_some());
    assert_eq!(last["clientId"], env.client_id.as_str());
}

/// Token-bucket mode and the identity service's documented headers
/// (learn.microsoft.com/graph/throttling-limits, "Identity and access service limits"):
/// `x-ms-resource-unit` on answers, `x-ms-throttle-limit-percentage` once more than 0.8 of the
/// limit is used, `x-ms-throttle-scope` (`<Scope>/<Limit>/<ApplicationId>/<TenantId>`) and
/// `x-ms-throttle-information` on a 429, whose body is still published sample 13.
#[tokio::test]
async fn a_token_bucket_throttles_identity_with_its_documented_headers_and_other_services_apart() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    env.control_put(
        "/budgets",
        json!({"requestsPerWindow": 5, "windowSeconds": 10, "refill": "tokenBucket"}),
    )
    .await
    .assert_status(204);
    let mut percentages = Vec::new();
    for _ in 0..5 {
        let answer = env.get("/users", &token).await.assert_status(200);
        assert_eq!(answer.header("x-ms-resource-unit").as_deref(), Some("1"));
        percentages.push(answer.header("x-ms-throttle-limit-percentage"));
    }
    assert!(
        percentages[..4].iter().all(Option::is_none),
        "not below 0.8: {percentages:?}"
    );
    let last: f64 = percentages[4]
        .as_deref()
        .expect("sent past 0.8")
        .parse()
        .expect("a number");
    assert!((0.8..=1.8).contains(&last), "{last}");
    let throttled = env.get("/users", &token).await.assert_status(429);
    assert_conforms("13-throttled-429-response-body.json", &throttled.json);
    let scope = throttled.header("x-ms-throttle-scope").expect("scope");
    let parts: Vec<&str> = scope.split('/').collect();
    assert_eq!(parts.len(), 4, "{scope}");
    assert_eq!((parts[0], parts[1]), ("Tenant_Application", "ReadWrite"));
    assert!(parts[2..].iter().all(|id| uuid_like(id)), "{scope}");
    assert_eq!(
        throttled.header("x-ms-throttle-information").as_deref(),
        Some("ResourceUnitLimitExceeded")
    );
    // One token in debt, two to go at 0.5 a second: 4 s.
    let retry_after: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert_eq!(retry_after, 4);
    // Outlook keeps its own limits, and sends no identity headers.
    let mail = env
        .get(&format!("/users/{adele}/messages"), &token)
        .await
        .assert_status(200);
    assert!(mail.header("x-ms-resource-unit").is_none());
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}
