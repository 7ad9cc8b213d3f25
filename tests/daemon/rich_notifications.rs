//! Rich notifications (`includeResourceData`) through the real daemon, on both databases:
//! Microsoft's samples 02 and 03 filled in as Graph fills them (real encryption for the
//! subscription's certificate, real RS256 validation tokens from the emulator, whose keys the
//! daemon fetches like the identity platform's), every forged or tampered variant refused
//! with nothing queued, and end to end: a configured rich subscription is created at the
//! emulator with tenantd's certificate, a new message arrives encrypted and is stored without
//! a fetch.

use std::sync::Arc;

use graph_emulator::rich::{Certificate, TokenClaims, TokenSigner};
use serde_json::{json, Value};
use tenantd::subscriptions::{self, Desired, Origin};
use tenantd::vault::Keyring;

use crate::helpers::{spawn_app_with, test_config, TestApp, TestDb};
use crate::on_both_backends;
use crate::webhooks::{eventually, live_with, sample, send_mail, TENANT};

const GRAPH_ID: &str = "10493aa0-4d29-4df5-bc0c-ef742cc6cd7f";

struct Rich {
    app: TestApp,
    db: TestDb,
    emulator: graph_emulator::Emulator,
    client_id: String,
    client_state: String,
    certificate: Certificate,
    certificate_id: String,
}

/// The daemon (workers off) with a rich subscription Graph created as `GRAPH_ID`, an app
/// connection whose client id is the tokens' audience, and the emulator as identity platform.
async fn rich(db: TestDb) -> Rich {
    let (emulator, client_id, secret) =
        crate::helpers::seeded_emulator(TENANT, 1, &["Chat.Read.All"]).await;
    let mut config = test_config(&db);
    config.queue.workers = 0;
    config.identity.authority = url::Url::parse(&emulator.base_url()).unwrap();
    let keys = Arc::new(Keyring::load(&config.secrets.key_file).unwrap());
    let store = db.store().await;
    store.migrate().await.unwrap();
    let connection =
        crate::helpers::default_app(&store, &keys, &emulator, TENANT, &client_id, &secret).await;
    let types = vec!["created".to_string()];
    let row = subscriptions::declare(
        &store,
        &keys,
        &Desired {
            tenant_id: TENANT,
            resource: "chats/getAllMessages",
            change_types: &types,
            origin: Origin::Cli,
            include_resource_data: true,
        },
    )
    .await
    .unwrap();
    subscriptions::record_created(&store, &row.id, GRAPH_ID, &connection.id, 4_102_444_800)
        .await
        .unwrap();
    let client_state = subscriptions::client_state(&store, &keys, &row.id)
        .await
        .unwrap()
        .to_string();
    let certificate = Certificate::parse(row.encryption_certificate.as_deref().unwrap())
        .expect("tenantd's certificate holds an RSA key Graph accepts");
    let app = spawn_app_with(config).await;
    Rich {
        app,
        db,
        emulator,
        client_id,
        client_state,
        certificate,
        certificate_id: row.encryption_certificate_id.unwrap(),
    }
}

/// A chat message as Graph returns it (the resource a rich notification carries).
fn chat_message() -> Value {
    json!({
        "@odata.type": "#microsoft.graph.chatMessage",
        "id": "1612289765949",
        "messageType": "message",
        "createdDateTime": "2021-02-02T18:16:05.949Z",
        "chatId": "19:8ea0e38b-efb3-4757-924a-5f94061cf8c2_97f62344-57dc-409c-88ad-c4af14158ff5@unq.gbl.spaces",
        "from": {"user": {"id": "97f62344-57dc-409c-88ad-c4af14158ff5", "displayName": "Megan Bowen", "userIdentityType": "aadUser"}},
        "body": {"contentType": "text", "content": "Hello, é ✓ \"quoted\""}
    })
}

impl Rich {
    fn signer(&self) -> &TokenSigner {
        &self.emulator.shared().token_signer
    }

    fn token(&self) -> String {
        self.signer().sign(&TokenClaims::for_delivery(
            TENANT,
            &self.client_id,
            graph_emulator::clock::now(),
        ))
    }

    /// Sample 02 as Graph sends it: placeholders filled, real `encryptedContent` (with the
    /// `dataSignature` Graph adds) and a real validation token.
    fn sample_02(&self, content: &Value, tokens: Vec<String>) -> Value {
        let mut body: Value = serde_json::from_str(
            &sample("02-rich-notification-chatmessage-encrypted.json")
                .replace("<<--SpecifiedClientState-->>", &self.client_state)
                .replace("<<--TenantForWhichNotificationWasSent-->>", TENANT),
        )
        .unwrap();
        body["value"][0]["encryptedContent"] =
            self.certificate.encrypt(&self.certificate_id, content);
        body["validationTokens"] = json!(tokens);
        body
    }

    async fn post(&self, body: &Value) -> (u16, String) {
        let response = self
            .app
            .client
            .post(format!("http://{}/webhooks/graph", self.app.public))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn queued(&self) -> Vec<Value> {
        self.db
            .strings(
                "SELECT payload FROM jobs WHERE kind = 'graph_notification' ORDER BY created_at",
            )
            .await
            .iter()
            .map(|payload| serde_json::from_str(payload).unwrap())
            .collect()
    }
}

/// `//` comments out of a `.jsonc` sample (none of its strings hold `//`).
fn strip_comments(jsonc: &str) -> String {
    jsonc
        .lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn microsofts_rich_samples_are_accepted_and_opened(db: TestDb) {
    let rich = rich(db).await;
    let message = chat_message();
    let (status, _) = rich
        .post(&rich.sample_02(&message, vec![rich.token()]))
        .await;
    assert_eq!(status, 202, "sample 02 as Graph sends it");
    let queued = rich.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["content"], message, "the resource, decrypted");
    assert_eq!(
        queued[0]["resource"],
        "chats('19:8ea0e38b-efb3-4757-924a-5f94061cf8c2_97f62344-57dc-409c-88ad-c4af14158ff5@unq.gbl.spaces')/messages('1612289765949')"
    );

    // Sample 03 (a channel reply) with the "other properties typical in a notification" its
    // comment stands for, and its placeholders filled.
    let text = sample("03-rich-notification-channel-reply-encrypted.jsonc").replace(
        "// Other properties typical in a resource change notification",
        &format!(
            "\"clientState\": \"{}\", \"tenantId\": \"{TENANT}\", \"subscriptionExpirationDateTime\": \"2030-01-01T00:00:00Z\",",
            rich.client_state
        ),
    );
    let mut body: Value = serde_json::from_str(&strip_comments(&text)).unwrap();
    body["value"][0]["subscriptionId"] = json!(GRAPH_ID);
    let reply = json!({"id": "1565293727947", "replyToId": "1565045424600", "body": {"content": "a reply"}});
    body["value"][0]["encryptedContent"] = rich.certificate.encrypt(&rich.certificate_id, &reply);
    body["validationTokens"] = json!([rich.token()]);
    let (status, _) = rich.post(&body).await;
    assert_eq!(status, 202, "sample 03");
    let queued = rich.queued().await;
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[1]["content"], reply);
    rich.app.stop().await.unwrap();
}

async fn forged_tokens_and_tampered_content_are_refused_and_queue_nothing(db: TestDb) {
    let rich = rich(db).await;
    let message = chat_message();
    let now = graph_emulator::clock::now();
    let claims = TokenClaims::for_delivery(TENANT, &rich.client_id, now);
    let stranger = TokenSigner::default();
    let signer = rich.signer();
    let sign = |change: &dyn Fn(&mut TokenClaims)| {
        let mut claims = claims.clone();
        change(&mut claims);
        signer.sign(&claims)
    };
    let good = rich.token();
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.rsplit_once('.').unwrap();
    let other_body = {
        let other = sign(&|c| c.audience = "00000000-0000-4000-8000-000000000001".into());
        other.split('.').nth(1).unwrap().to_string()
    };
    let tokens: Vec<(&str, Vec<String>)> = vec![
        ("no token", vec![]),
        (
            "another app's audience",
            vec![sign(&|c| {
                c.audience = "00000000-0000-4000-8000-000000000001".into();
            })],
        ),
        (
            "another tenant",
            vec![sign(&|c| {
                c.tenant = "11111111-2222-4333-8444-555555555555".into();
            })],
        ),
        (
            "expired",
            vec![sign(&|c| {
                c.issued_at -= 7200;
                c.expires_at = c.issued_at + 600;
            })],
        ),
        ("not yet valid", vec![sign(&|c| c.issued_at += 7200)]),
        (
            "not Graph's change tracking",
            vec![sign(&|c| {
                c.app_id = rich.client_id.clone();
            })],
        ),
        ("signed by an unknown key", vec![stranger.sign(&claims)]),
        (
            "claims swapped under a valid signature",
            vec![format!("{head}.{other_body}.{signature}")],
        ),
        (
            "another valid token's claims under this signature",
            vec![{
                let twin = rich.token();
                format!("{head}.{}.{signature}", twin.split('.').nth(1).unwrap())
            }],
        ),
        (
            "one good, one bad",
            vec![good.clone(), stranger.sign(&claims)],
        ),
        ("not a JWT", vec!["not-a-token".into()]),
        (
            "another issuer",
            vec![sign(&|c| {
                c.issuer = Some("https://login.example.com/attacker/v2.0".into());
            })],
        ),
        (
            "alg none, no signature",
            vec![{
                use base64::Engine;
                let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(r#"{"typ":"JWT","alg":"none"}"#);
                let body = good.split('.').nth(1).unwrap();
                format!("{header}.{body}.")
            }],
        ),
    ];
    let mut answers = Vec::new();
    for (case, tokens) in tokens {
        let (status, body) = rich.post(&rich.sample_02(&message, tokens)).await;
        // change-notifications-with-resource-data.md, "How to validate": answer 202 even when
        // validation fails, so retries stop and a rogue sender learns nothing.
        assert_eq!(status, 202, "{case}");
        answers.push(body);
    }
    // Tampered content under a valid token.
    let tamper = |change: &dyn Fn(&mut Value)| {
        let mut body = rich.sample_02(&message, vec![good.clone()]);
        change(&mut body["value"][0]["encryptedContent"]);
        body
    };
    let flip = |field: &str| {
        let field = field.to_string();
        move |content: &mut Value| {
            use base64::Engine;
            let engine = base64::engine::general_purpose::STANDARD;
            let mut bytes = engine.decode(content[&field].as_str().unwrap()).unwrap();
            bytes[0] ^= 1;
            content[&field] = json!(engine.encode(bytes));
        }
    };
    let other_certificate = tenantd::rich_notifications::new_certificate("other").unwrap();
    let foreign = Certificate::parse(&other_certificate.certificate).unwrap();
    let cases: Vec<(&str, Value)> = vec![
        ("data changed", tamper(&flip("data"))),
        ("signature changed", tamper(&flip("dataSignature"))),
        ("key changed", tamper(&flip("dataKey"))),
        (
            "no signature",
            tamper(&|c| {
                c.as_object_mut().unwrap().remove("dataSignature");
            }),
        ),
        (
            "another certificate id",
            tamper(&|c| c["encryptionCertificateId"] = json!("someone-else")),
        ),
        ("encrypted for another certificate", {
            let mut body = rich.sample_02(&message, vec![good.clone()]);
            body["value"][0]["encryptedContent"] = foreign.encrypt(&rich.certificate_id, &message);
            body
        }),
        ("wrong clientState", {
            let mut body = rich.sample_02(&message, vec![good.clone()]);
            body["value"][0]["clientState"] = json!("forged");
            body
        }),
    ];
    for (case, body) in cases {
        let (status, answer) = rich.post(&body).await;
        assert_eq!(status, 202, "{case}");
        answers.push(answer);
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "the answer never says which check failed"
    );
    assert!(rich.queued().await.is_empty(), "nothing was queued");
    // And the untampered delivery still goes through.
    let (status, _) = rich.post(&rich.sample_02(&message, vec![good])).await;
    assert_eq!(status, 202);
    rich.app.stop().await.unwrap();
}

async fn a_configured_rich_subscription_delivers_mail_without_a_fetch(db: TestDb) {
    let select = "messages?$select=subject,from,receivedDateTime,internetMessageId,conversationId,bodyPreview,parentFolderId";
    let live = live_with(&db, select, true).await;
    let rich = db
        .strings(
            "SELECT encryption_certificate_id FROM subscriptions WHERE include_resource_data = 1",
        )
        .await;
    assert_eq!(rich.len(), 1, "created with tenantd's certificate");
    live.emulator.shared().throttle.clear_requests();
    send_mail(
        &live.emulator,
        &live.client_id,
        &live.secret,
        &live.user_id,
        "Encrypted hello",
    )
    .await;
    let stored = eventually(
        &db,
        "SELECT subject FROM messages WHERE deleted = 0 AND subject = 'Encrypted hello'",
    )
    .await;
    assert_eq!(stored, ["Encrypted hello"]);
    let fetched = live
        .emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/messages/"))
        .count();
    assert_eq!(fetched, 0, "the message came with the notification");
    live.app.stop().await.unwrap();
}

on_both_backends!(
    microsofts_rich_samples_are_accepted_and_opened,
    forged_tokens_and_tampered_content_are_refused_and_queue_nothing,
    a_configured_rich_subscription_delivers_mail_without_a_fetch,
);
