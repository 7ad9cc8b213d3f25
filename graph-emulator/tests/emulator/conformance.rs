//! Field-by-field comparison of the emulator's answers with Microsoft's published samples
//! (tests/samples, copied verbatim with their sources). The notification and subscription
//! samples are checked where those are produced (notifications.rs, throttling.rs).

use serde_json::json;

use crate::helpers::{
    assert_conforms, mismatches, sample, Env, Handshake, Receiver, GRAPH_DEFAULT,
};

#[test]
fn the_comparison_catches_missing_fields_casing_and_types() {
    let original = sample("11-subscription-create-response.json");
    assert!(mismatches(&original, &original, "$").is_empty());
    let mut renamed = original.clone();
    let value = renamed
        .as_object_mut()
        .unwrap()
        .remove("clientState")
        .unwrap();
    renamed["clientstate"] = value;
    assert_eq!(
        mismatches(&original, &renamed, "$"),
        vec!["$.clientState: casing differs (clientstate)"]
    );
    let mut retyped = original.clone();
    retyped["expirationDateTime"] = json!(12);
    assert_eq!(
        mismatches(&original, &retyped, "$"),
        vec!["$.expirationDateTime: string expected, number found"]
    );
    let nested = sample("01-basic-notification-message-created.json");
    let mut missing = nested.clone();
    missing["value"][0]["resourceData"]
        .as_object_mut()
        .unwrap()
        .remove("@odata.etag");
    assert_eq!(
        mismatches(&nested, &missing, "$"),
        vec!["$.value[0].resourceData.@odata.etag: missing"]
    );
}

#[test]
fn every_sample_parses() {
    for name in [
        "01-basic-notification-message-created.json",
        "02-rich-notification-chatmessage-encrypted.json",
        "03-rich-notification-channel-reply-encrypted.jsonc",
        "04-validation-token-jwt-claims.jsonc",
        "05-lifecycle-reauthorizationRequired.json",
        "06-lifecycle-subscriptionRemoved.json",
        "07-lifecycle-missed.json",
        "10-subscription-create-request-with-lifecycle.json",
        "11-subscription-create-response.json",
        "12-subscription-renew-response.json",
        "13-throttled-429-response-body.json",
        "14-token-error-response.json",
        "15-token-client-credentials-success.json",
        "16-application-addpassword-response.json",
    ] {
        assert!(sample(name).is_object(), "{name}");
    }
}

#[tokio::test]
async fn token_success_and_error_bodies_match_the_identity_samples() {
    let env = Env::with(&["User.Read.All"], &[]).await;
    let ok = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", &env.client_secret),
            ("scope", GRAPH_DEFAULT),
        ])
        .await
        .assert_status(200);
    assert_conforms("15-token-client-credentials-success.json", &ok.json);
    let error = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", &env.client_secret),
            ("scope", "https://example.contoso.com/activity.read"),
        ])
        .await
        .assert_status(400);
    assert_conforms("14-token-error-response.json", &error.json);
    assert!(error.json["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS70011: "));
    let claims =
        graph_emulator::jwt::decode_claims(ok.json["access_token"].as_str().unwrap()).unwrap();
    let mut expected = sample("04-validation-token-jwt-claims.jsonc");
    // The sample's appid is the change-tracking publisher; here it is the app itself.
    expected.as_object_mut().unwrap().remove("appid");
    assert!(claims.contains_key("appid"));
    let problems = mismatches(&expected, &serde_json::Value::Object(claims), "$");
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn add_password_matches_the_published_response() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let app = env
        .post("/applications", &token, json!({"displayName": "bot"}))
        .await
        .assert_status(201);
    let password = env
        .post(
            &format!(
                "/applications/{}/addPassword",
                app.json["id"].as_str().unwrap()
            ),
            &token,
            json!({"passwordCredential": {"displayName": "Password friendly name"}}),
        )
        .await
        .assert_status(200);
    assert_conforms("16-application-addpassword-response.json", &password.json);
}

#[tokio::test]
async fn the_published_subscription_request_is_accepted_as_is() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let receiver = Receiver::start(Handshake::Correct).await;
    let mut request = sample("10-subscription-create-request-with-lifecycle.json");
    request["notificationUrl"] = json!(receiver.url());
    request["lifecycleNotificationUrl"] = json!(receiver.lifecycle_url());
    request["resource"] = json!(format!("/users/{adele}/messages"));
    request["expirationDateTime"] = json!(graph_emulator::clock::graph(
        graph_emulator::clock::now() + time::Duration::days(2)
    ));
    let created = env
        .post("/subscriptions", &token, request)
        .await
        .assert_status(201);
    assert_eq!(created.json["changeType"], "created,updated");
    assert_eq!(
        created.json["lifecycleNotificationUrl"],
        receiver.lifecycle_url()
    );
}
