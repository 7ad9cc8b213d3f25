//! Subscriptions and notifications: the validation handshake and its failures, lifetimes,
//! renewal, change notifications, redelivery and lifecycle events.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_conforms, Env, Handshake, Receiver, DOMAIN};

fn in_minutes(minutes: i64) -> String {
    graph_emulator::clock::graph(graph_emulator::clock::now() + time::Duration::minutes(minutes))
}

/// A one-on-one chat of `adele` and alex; its id.
async fn one_on_one_chat(env: &Env, token: &str, adele: &str) -> String {
    let members = json!([
        {"roles": ["owner"], "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{adele}')")},
        {"roles": ["owner"], "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('alex@{DOMAIN}')")},
    ]);
    let chat = env
        .post(
            "/chats",
            token,
            json!({"chatType": "oneOnOne", "members": members}),
        )
        .await
        .assert_status(201);
    chat.json["id"].as_str().unwrap().to_string()
}

async fn subscribe(env: &Env, token: &str, body: Value) -> crate::helpers::Answer {
    env.post("/subscriptions", token, body).await
}

#[tokio::test]
async fn creating_a_subscription_validates_both_urls_and_answers_like_graph() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let created = subscribe(
        &env,
        &token,
        json!({
            "changeType": "created,updated",
            "notificationUrl": receiver.url(),
            "lifecycleNotificationUrl": receiver.lifecycle_url(),
            "resource": format!("/users/{adele}/messages"),
            "expirationDateTime": in_minutes(600),
            "clientState": "secretClientValue",
        }),
    )
    .await
    .assert_status(201);
    assert_conforms("11-subscription-create-response.json", &created.json);
    assert_eq!(created.json["applicationId"], env.client_id.as_str());
    assert_eq!(created.json["clientState"], "secretClientValue");
    let validations = receiver.validations();
    assert_eq!(
        validations.len(),
        2,
        "notificationUrl and lifecycleNotificationUrl are both validated"
    );
    for (token, content_type) in validations {
        assert!(
            token.starts_with("Validation: Testing client application reachability"),
            "decoded token: {token}"
        );
        assert_eq!(content_type, "text/plain; charset=utf-8");
    }
}

#[tokio::test]
async fn a_failed_handshake_refuses_the_subscription_with_graphs_error() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let mut settings = env.control_get("/settings").await;
    settings["handshakeTimeoutMs"] = json!(300);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);
    let cases = [
        (
            Handshake::WrongBody,
            "Response must exactly match validationToken",
        ),
        (
            Handshake::WrongContentType,
            "content type must be text/plain",
        ),
        (Handshake::Slow(Duration::from_millis(1500)), "timed out"),
    ];
    for (handshake, words) in cases {
        let receiver = Receiver::start(handshake).await;
        let refused = subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(60)})).await.assert_status(400);
        assert!(
            refused.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(words),
            "{handshake:?}: {}",
            refused.text
        );
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": dead_url, "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(60)})).await.assert_status(400);
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": "http://hooks.example.com/x", "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(60)})).await.assert_status(400);
    assert_eq!(
        env.control_get("/subscriptions").await,
        json!([]),
        "nothing was created"
    );
}

#[tokio::test]
async fn lifetimes_are_enforced_per_resource() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let body = |resource: String, minutes: i64| json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": resource, "expirationDateTime": in_minutes(minutes)});
    let too_long = subscribe(
        &env,
        &token,
        body(format!("users/{adele}/messages"), 10_081),
    )
    .await
    .assert_status(400);
    assert!(too_long.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("10080 minutes"));
    subscribe(&env, &token, body("users".into(), 41_760 - 1))
        .await
        .assert_status(201);
    subscribe(
        &env,
        &token,
        body(format!("users/{adele}/drive/root"), 42_300 + 5),
    )
    .await
    .assert_status(400);
    let short = subscribe(&env, &token, body(format!("users/{adele}/events"), 5))
        .await
        .assert_status(201);
    let expiry =
        graph_emulator::clock::parse(short.json["expirationDateTime"].as_str().unwrap()).unwrap();
    assert!(
        expiry >= graph_emulator::clock::now() + time::Duration::minutes(44),
        "raised to 45 minutes"
    );
    subscribe(&env, &token, body(format!("users/{adele}/messages"), -5))
        .await
        .assert_status(400);
    env.post(
        "/subscriptions",
        &token,
        json!({"changeType": "created", "resource": "users"}),
    )
    .await
    .assert_status(400);
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": "users", "expirationDateTime": in_minutes(60), "clientState": "x".repeat(129)})).await.assert_status(400);
}

#[tokio::test]
async fn teams_subscriptions_beyond_an_hour_need_a_lifecycle_url() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let refused = subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": "chats/getAllMessages", "expirationDateTime": in_minutes(120)})).await.assert_status(400);
    assert!(refused.json["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("lifecycleNotificationUrl is required"));
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "lifecycleNotificationUrl": receiver.lifecycle_url(), "resource": "chats/getAllMessages", "expirationDateTime": in_minutes(4_320)})).await.assert_status(201);
}

#[tokio::test]
async fn renew_reauthorize_and_delete_and_404_for_unknown_ids() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let created = subscribe(&env, &token, json!({"changeType": "updated", "notificationUrl": receiver.url(), "resource": "users", "expirationDateTime": in_minutes(60), "clientState": "s"})).await.assert_status(201);
    let id = created.json["id"].as_str().unwrap();
    let renewed = env
        .graph(
            Method::PATCH,
            &format!("/subscriptions/{id}"),
            &token,
            Some(json!({"expirationDateTime": in_minutes(2_000)})),
        )
        .await
        .assert_status(200);
    assert_conforms("12-subscription-renew-response.json", &renewed.json);
    assert_ne!(
        renewed.json["expirationDateTime"],
        created.json["expirationDateTime"]
    );
    env.graph(
        Method::PATCH,
        &format!("/subscriptions/{id}"),
        &token,
        Some(json!({"lifecycleNotificationUrl": receiver.lifecycle_url()})),
    )
    .await
    .assert_status(400);
    env.graph(
        Method::PATCH,
        &format!("/subscriptions/{id}"),
        &token,
        Some(json!({"expirationDateTime": in_minutes(50_000)})),
    )
    .await
    .assert_status(400);
    env.post(
        &format!("/subscriptions/{id}/reauthorize"),
        &token,
        json!({}),
    )
    .await
    .assert_status(204);
    assert_eq!(
        env.get("/subscriptions", &token).await.json["value"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    env.graph(
        Method::DELETE,
        &format!("/subscriptions/{id}"),
        &token,
        None,
    )
    .await
    .assert_status(204);
    env.get(&format!("/subscriptions/{id}"), &token)
        .await
        .assert_status(404);
    env.graph(
        Method::PATCH,
        &format!("/subscriptions/{id}"),
        &token,
        Some(json!({"expirationDateTime": in_minutes(100)})),
    )
    .await
    .assert_status(404);
}

#[tokio::test]
async fn changes_are_notified_like_the_published_sample_and_only_for_subscribed_types() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let subscription = subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/mailFolders('Inbox')/messages"), "expirationDateTime": in_minutes(600), "clientState": "secretClientValue"})).await.assert_status(201);
    let created = env
        .post(
            &format!("/users/{adele}/mailFolders/inbox/messages"),
            &token,
            json!({"subject": "hello"}),
        )
        .await
        .assert_status(201);
    let body = receiver.next().await;
    assert_conforms("01-basic-notification-message-created.json", &body);
    let item = &body["value"][0];
    assert_eq!(item["subscriptionId"], subscription.json["id"]);
    assert_eq!(item["clientState"], "secretClientValue");
    assert_eq!(item["changeType"], "created");
    assert_eq!(item["resourceData"]["id"], created.json["id"]);
    assert_eq!(item["tenantId"], crate::helpers::TENANT);
    // A draft in another folder and an update are not subscribed.
    env.post(
        &format!("/users/{adele}/messages"),
        &token,
        json!({"subject": "draft"}),
    )
    .await
    .assert_status(201);
    let id = created.json["id"].as_str().unwrap();
    env.graph(
        Method::PATCH,
        &format!("/users/{adele}/messages/{id}"),
        &token,
        Some(json!({"isRead": true})),
    )
    .await
    .assert_status(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.pending(), 0);
}

#[tokio::test]
async fn failed_deliveries_are_retried_then_recorded_as_failed() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let mut settings = env.control_get("/settings").await;
    settings["deliveryRetryBaseMs"] = json!(20);
    settings["deliveryRetries"] = json!(3);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);
    let receiver = Receiver::start(Handshake::Correct).await;
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(600)})).await.assert_status(201);
    receiver.fail_next(2);
    env.post(
        &format!("/users/{adele}/messages"),
        &token,
        json!({"subject": "one"}),
    )
    .await
    .assert_status(201);
    receiver.next().await;
    receiver.fail_next(100);
    env.post(
        &format!("/users/{adele}/messages"),
        &token,
        json!({"subject": "two"}),
    )
    .await
    .assert_status(201);
    let mut records = Value::Null;
    for _ in 0..100 {
        records = env.control_get("/deliveries").await;
        if records.as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let records = records.as_array().unwrap();
    assert_eq!(records[0]["outcome"], "delivered");
    assert_eq!(records[0]["attempts"], 3);
    assert_eq!(records[1]["outcome"], "failed");
    assert_eq!(records[1]["attempts"], 4);
    assert_eq!(records[1]["lastStatus"], 503);
}

#[tokio::test]
async fn lifecycle_events_are_sent_like_the_published_samples() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let created = subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "lifecycleNotificationUrl": receiver.lifecycle_url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(600), "clientState": "s3cret"})).await.assert_status(201);
    let id = created.json["id"].as_str().unwrap();
    for (event, sample) in [
        (
            "reauthorizationRequired",
            "05-lifecycle-reauthorizationRequired.json",
        ),
        ("missed", "07-lifecycle-missed.json"),
        (
            "subscriptionRemoved",
            "06-lifecycle-subscriptionRemoved.json",
        ),
    ] {
        env.control_post(
            &format!("/subscriptions/{id}/lifecycle"),
            json!({"event": event}),
        )
        .await
        .assert_status(202);
        let body = receiver.next().await;
        assert_conforms(sample, &body);
        assert_eq!(body["value"][0]["lifecycleEvent"], event);
        assert_eq!(body["value"][0]["clientState"], "s3cret");
    }
    env.get(&format!("/subscriptions/{id}"), &token)
        .await
        .assert_status(404);
    env.control_post(
        &format!("/subscriptions/{id}/lifecycle"),
        json!({"event": "missed"}),
    )
    .await
    .assert_status(404);
}

#[tokio::test]
async fn chat_and_user_changes_are_notified() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    env.user("alex", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let chat_id = &one_on_one_chat(&env, &token, &adele).await;
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "lifecycleNotificationUrl": receiver.lifecycle_url(), "resource": format!("chats/{chat_id}/messages"), "expirationDateTime": in_minutes(600), "clientState": "c"})).await.assert_status(201);
    let tokens = env
        .delegated(&format!("adele@{DOMAIN}"), "ChatMessage.Send")
        .await;
    env.post(
        &format!("/chats/{chat_id}/messages"),
        tokens["access_token"].as_str().unwrap(),
        json!({"body": {"content": "hi"}}),
    )
    .await
    .assert_status(201);
    let mut body = receiver.next().await;
    // The rich sample minus what only rich notifications carry (this subscription is basic).
    let mut sample = crate::helpers::sample("02-rich-notification-chatmessage-encrypted.json");
    sample["value"][0]
        .as_object_mut()
        .unwrap()
        .remove("encryptedContent");
    sample.as_object_mut().unwrap().remove("validationTokens");
    let problems = crate::helpers::mismatches(&sample, &body, "$");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(body["value"][0]["resource"]
        .as_str()
        .unwrap()
        .starts_with(&format!("chats('{chat_id}')/messages('")));

    subscribe(&env, &token, json!({"changeType": "updated", "notificationUrl": receiver.url(), "resource": "users", "expirationDateTime": in_minutes(600)})).await.assert_status(201);
    env.post("/users", &token, json!({"accountEnabled": true, "displayName": "N", "mailNickname": "n", "userPrincipalName": format!("n@{DOMAIN}"), "passwordProfile": {"password": "x1!Aaaaaaaa"}})).await.assert_status(201);
    body = receiver.next().await;
    assert_eq!(body["value"][0]["changeType"], "updated");
    assert_eq!(
        body["value"][0]["resourceData"]["@odata.type"],
        "#Microsoft.Graph.User"
    );
}

#[tokio::test]
async fn slow_notification_delivery_can_be_injected() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(600)})).await.assert_status(201);
    env.control_put("/faults", json!({"notificationDelayMs": 400}))
        .await
        .assert_status(204);
    let started = std::time::Instant::now();
    env.post(
        &format!("/users/{adele}/messages"),
        &token,
        json!({"subject": "late"}),
    )
    .await
    .assert_status(201);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.pending(),
        0,
        "not delivered before the injected delay"
    );
    receiver.next().await;
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// A subscriber's certificate and key, made the way a client would (rcgen on aws-lc-rs).
fn subscriber_certificate() -> (String, Vec<u8>) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["subscriber".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(certificate.der()),
        key.serialize_der(),
    )
}

/// Opens `encryptedContent` as Microsoft documents it, independently of the emulator's code:
/// RSA-OAEP-SHA1 for the key, HMAC-SHA256 over the encrypted bytes, AES-256-CBC with the
/// key's first 16 bytes as IV.
fn open(content: &Value, pkcs8: &[u8]) -> Value {
    use aws_lc_rs::cipher::{
        DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256,
    };
    use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let private =
        OaepPrivateDecryptingKey::new(PrivateDecryptingKey::from_pkcs8(pkcs8).unwrap()).unwrap();
    let sealed = b64.decode(content["dataKey"].as_str().unwrap()).unwrap();
    let mut buffer = vec![0u8; private.min_output_size()];
    let key = private
        .decrypt(&OAEP_SHA1_MGF1SHA1, &sealed, &mut buffer, None)
        .unwrap()
        .to_vec();
    assert_eq!(key.len(), 32);
    let mut data = b64.decode(content["data"].as_str().unwrap()).unwrap();
    let signature = b64
        .decode(content["dataSignature"].as_str().unwrap())
        .unwrap();
    aws_lc_rs::hmac::verify(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        &data,
        &signature,
    )
    .expect("dataSignature is HMAC-SHA256 of data");
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let cipher =
        PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &key).unwrap())
            .unwrap();
    let plain = cipher
        .decrypt(&mut data, DecryptionContext::Iv128(iv.into()))
        .unwrap();
    serde_json::from_slice(plain).unwrap()
}

#[tokio::test]
async fn rich_notifications_carry_the_resource_encrypted_and_signed_tokens() {
    use base64::Engine;
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    env.user("alex", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let (certificate, pkcs8) = subscriber_certificate();
    let rich = |resource: String, certificate: &str| {
        json!({"changeType": "created", "notificationUrl": receiver.url(), "lifecycleNotificationUrl": receiver.lifecycle_url(),
            "resource": resource, "expirationDateTime": in_minutes(600), "clientState": "c",
            "includeResourceData": true, "encryptionCertificate": certificate, "encryptionCertificateId": "cert-1"})
    };
    // Refused as Graph refuses them: no usable certificate; Outlook without $select.
    subscribe(
        &env,
        &token,
        rich(
            format!("users/{adele}/messages?$select=subject"),
            "bm90IGEgY2VydA==",
        ),
    )
    .await
    .assert_status(400);
    subscribe(
        &env,
        &token,
        rich(format!("users/{adele}/messages"), &certificate),
    )
    .await
    .assert_status(400);
    subscribe(&env, &token, rich("users".into(), &certificate))
        .await
        .assert_status(400);

    let chat_id = &one_on_one_chat(&env, &token, &adele).await;
    subscribe(
        &env,
        &token,
        rich(format!("chats/{chat_id}/messages"), &certificate),
    )
    .await
    .assert_status(201);
    let tokens = env
        .delegated(&format!("adele@{DOMAIN}"), "ChatMessage.Send")
        .await;
    let sent = env
        .post(
            &format!("/chats/{chat_id}/messages"),
            tokens["access_token"].as_str().unwrap(),
            json!({"body": {"content": "rich hello"}}),
        )
        .await
        .assert_status(201);
    let body = receiver.next().await;
    assert_conforms("02-rich-notification-chatmessage-encrypted.json", &body);
    let content = &body["value"][0]["encryptedContent"];
    assert_eq!(content["encryptionCertificateId"], "cert-1");
    let opened = open(content, &pkcs8);
    assert_eq!(opened["id"], sent.json["id"]);
    assert_eq!(opened["body"]["content"], "rich hello");

    // The validation token: claims of the published example, signed with a published key.
    let jwt = body["validationTokens"][0].as_str().unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_conforms("04-validation-token-jwt-claims.jsonc", &claims);
    assert_eq!(
        claims["appid"],
        graph_emulator::rich::CHANGE_TRACKING_APP_ID
    );
    assert_eq!(claims["aud"], env.client_id.as_str());
    let keys = reqwest::get(format!(
        "{}/common/discovery/v2.0/keys",
        env.emulator.base_url()
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the signing key is published");
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: b64.decode(key["n"].as_str().unwrap()).unwrap(),
        e: b64.decode(key["e"].as_str().unwrap()).unwrap(),
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &b64.decode(parts[2]).unwrap(),
    )
    .expect("signed by the published key");
}

/// Outlook notifications take every form Microsoft documents, in turns: sample 01's
/// `users/{id}@{tenant}/messages/{id}` with a notification `id`
/// (concepts/change-notifications-delivery-webhooks.md), then `Users/{id}/Messages/{id}` and
/// the rich form `Users('{id}')/messages('{id}')` without one
/// (concepts/outlook-change-notifications-overview.md). A subscription with `$filter` gets
/// `Created` as that document writes it. OneDrive items carry no `tenantId`.
#[tokio::test]
async fn notifications_take_every_documented_form() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(600), "clientState": "secretClientValue"})).await.assert_status(201);
    let mut seen = Vec::new();
    for n in 0..3 {
        let created = env
            .post(
                &format!("/users/{adele}/messages"),
                &token,
                json!({"subject": format!("form {n}")}),
            )
            .await
            .assert_status(201);
        let id = created.json["id"].as_str().unwrap().to_string();
        let body = receiver.next().await;
        let item = body["value"][0].clone();
        assert_eq!(item["tenantId"], crate::helpers::TENANT);
        assert_eq!(item["changeType"], "created");
        assert_eq!(item["resourceData"]["id"], id.as_str());
        seen.push((item, id));
    }
    let (first, id) = &seen[0];
    assert_eq!(
        first["resource"],
        format!("users/{adele}@{}/messages/{id}", crate::helpers::TENANT)
    );
    assert!(
        first["id"].is_string(),
        "sample 01 carries a notification id"
    );
    let (second, id) = &seen[1];
    assert_eq!(second["resource"], format!("Users/{adele}/Messages/{id}"));
    assert!(second.get("id").is_none());
    let (third, id) = &seen[2];
    assert_eq!(
        third["resource"],
        format!("Users('{adele}')/messages('{id}')")
    );

    // `$filter` subscription: the capitalised change type.
    let filtered = Receiver::start(Handshake::Correct).await;
    subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": filtered.url(), "resource": format!("users/{adele}/messages?$filter=importance eq 'high'"), "expirationDateTime": in_minutes(600), "clientState": "secretClientValue"})).await.assert_status(201);
    env.post(
        &format!("/users/{adele}/messages"),
        &token,
        json!({"subject": "filtered"}),
    )
    .await
    .assert_status(201);
    assert_eq!(filtered.next().await["value"][0]["changeType"], "Created");

    // OneDrive: no tenantId on the item.
    let drive = Receiver::start(Handshake::Correct).await;
    subscribe(&env, &token, json!({"changeType": "updated", "notificationUrl": drive.url(), "resource": format!("users/{adele}/drive/root"), "expirationDateTime": in_minutes(600), "clientState": "secretClientValue"})).await.assert_status(201);
    let put = env
        .http
        .put(format!(
            "{}/users/{adele}/drive/root:/notes.txt:/content",
            env.emulator.graph_url()
        ))
        .bearer_auth(&token)
        .body("notes")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let item = drive.next().await["value"][0].clone();
    assert!(item.get("tenantId").is_none(), "{item}");
    assert_eq!(item["changeType"], "updated");
}

/// `creatorId` is the service principal's object id (a GUID) for app-only subscriptions, as
/// in the Outlook overview's subscription responses; the app token's `oid` is the same.
#[tokio::test]
async fn an_app_only_subscription_is_created_by_the_apps_service_principal() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let created = subscribe(&env, &token, json!({"changeType": "created", "notificationUrl": receiver.url(), "resource": format!("users/{adele}/messages"), "expirationDateTime": in_minutes(600), "clientState": "secretClientValue"})).await.assert_status(201);
    let creator = created.json["creatorId"].as_str().unwrap().to_string();
    assert!(uuid_like(&creator), "{creator}");
    let claims = graph_emulator::jwt::decode_claims(&token).unwrap();
    assert_eq!(claims["oid"], creator.as_str());
}

fn uuid_like(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(n, c)| match n {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
