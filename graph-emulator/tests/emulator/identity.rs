//! The identity platform: grants, rotation, device code states, PKCE, admin consent and the
//! switchable AADSTS failures.

use serde_json::json;

use crate::helpers::{client, Answer, Env, DOMAIN, GRAPH_DEFAULT, TENANT};

async fn poll_device(env: &Env, device_code: &str) -> Answer {
    env.token_form(&[
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("client_id", &env.client_id),
        ("device_code", device_code),
    ])
    .await
}

async fn device_code(env: &Env, authority: &str, scope: &str) -> serde_json::Value {
    Answer::from(
        env.http
            .post(env.url(&format!("/{authority}/oauth2/v2.0/devicecode")))
            .form(&[("client_id", env.client_id.as_str()), ("scope", scope)])
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_status(200)
    .json
}

async fn app_only(env: &Env, client_id: &str, secret: &str) -> Answer {
    env.token_form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", GRAPH_DEFAULT),
    ])
    .await
}

fn claims(token: &str) -> serde_json::Map<String, serde_json::Value> {
    graph_emulator::jwt::decode_claims(token).expect("JWT-shaped")
}

#[tokio::test]
async fn client_credentials_issue_an_app_token_with_roles_and_no_refresh_token() {
    let env = Env::with(&["User.Read.All"], &[]).await;
    let answer = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", &env.client_secret),
            ("scope", GRAPH_DEFAULT),
        ])
        .await
        .assert_status(200);
    assert_eq!(answer.json["token_type"], "Bearer");
    assert!(answer.json.get("refresh_token").is_none());
    let token = answer.json["access_token"].as_str().unwrap();
    let claims = claims(token);
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], env.client_id.as_str());
    assert_eq!(claims["roles"], json!(["User.Read.All"]));
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, answer.json["expires_in"].as_i64().unwrap());
    // The domain works as the authority too.
    let by_domain = Answer::from(
        env.http
            .post(env.url(&format!("/{DOMAIN}/oauth2/v2.0/token")))
            .basic_auth(&env.client_id, Some(&env.client_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", GRAPH_DEFAULT),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    by_domain.assert_status(200);
}

#[tokio::test]
async fn token_errors_carry_the_aadsts_code_and_microsofts_fields() {
    let env = Env::with(&["User.Read.All"], &[]).await;
    let wrong_secret = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", "nope"),
            ("scope", GRAPH_DEFAULT),
        ])
        .await
        .assert_status(401);
    assert_eq!(wrong_secret.json["error"], "invalid_client");
    assert_eq!(wrong_secret.aadsts(), 7000215);
    assert!(wrong_secret.json["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215: "));
    assert!(
        !wrong_secret.text.contains("nope"),
        "the presented secret is never echoed"
    );

    let bad_scope = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", &env.client_secret),
            ("scope", "https://graph.microsoft.com/User.Read"),
        ])
        .await
        .assert_status(400);
    assert_eq!(
        (
            bad_scope.json["error"].as_str().unwrap(),
            bad_scope.aadsts()
        ),
        ("invalid_scope", 70011)
    );

    let unknown_tenant = Answer::from(
        env.http
            .post(env.url("/00000000-0000-0000-0000-000000000001/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("scope", GRAPH_DEFAULT),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_status(400);
    assert_eq!(unknown_tenant.aadsts(), 90002);

    let unknown_app = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "11111111-1111-1111-1111-111111111111"),
            ("client_secret", "x"),
            ("scope", GRAPH_DEFAULT),
        ])
        .await
        .assert_status(400);
    assert_eq!(
        (
            unknown_app.json["error"].as_str().unwrap(),
            unknown_app.aadsts()
        ),
        ("unauthorized_client", 700016)
    );

    let over_common = Answer::from(
        env.http
            .post(env.url("/common/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", env.client_id.as_str()),
                ("client_secret", env.client_secret.as_str()),
                ("scope", GRAPH_DEFAULT),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_status(400);
    assert_eq!(over_common.aadsts(), 9001023);
}

#[tokio::test]
async fn every_switchable_failure_answers_with_its_code() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let cases = [
        (
            "consent_required",
            "invalid_grant",
            65001,
            Some("consent_required"),
        ),
        ("mfa_required", "invalid_grant", 50076, Some("basic_action")),
        (
            "blocked_by_conditional_access",
            "invalid_grant",
            53003,
            Some("message_only"),
        ),
        (
            "refresh_token_expired",
            "invalid_grant",
            700082,
            Some("bad_token"),
        ),
        (
            "refresh_token_revoked",
            "invalid_grant",
            50173,
            Some("bad_token"),
        ),
        ("bad_client_secret", "invalid_client", 7000215, None),
        ("app_not_in_tenant", "unauthorized_client", 700016, None),
        ("unknown_tenant", "invalid_request", 90002, None),
    ];
    let tokens = env
        .delegated(&format!("adele@{DOMAIN}"), "offline_access User.Read")
        .await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    for (failure, error, code, suberror) in cases {
        let mut rule = json!({"failure": failure, "tenant": TENANT});
        if code != 7000215 && code != 700016 && code != 90002 {
            rule["user"] = json!(format!("adele@{DOMAIN}"));
        }
        env.control_post("/failures", rule).await.assert_status(201);
        let answer = env
            .token_form(&[
                ("grant_type", "refresh_token"),
                ("client_id", &env.client_id),
                ("client_secret", &env.client_secret),
                ("refresh_token", &refresh),
                ("scope", "offline_access User.Read"),
            ])
            .await;
        assert_eq!(answer.json["error"], error, "{failure}: {}", answer.text);
        assert_eq!(answer.aadsts(), code, "{failure}");
        assert_eq!(answer.json["suberror"].as_str(), suberror, "{failure}");
        assert!(answer.json["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}: ")));
        for field in ["timestamp", "trace_id", "correlation_id"] {
            assert!(answer.json[field].is_string(), "{failure}: {field}");
        }
        let cleared = env
            .http
            .delete(env.url("/_emulator/failures"))
            .send()
            .await
            .unwrap();
        assert_eq!(cleared.status(), 204);
    }
    // Cleared: the refresh token works again.
    env.token_form(&[
        ("grant_type", "refresh_token"),
        ("client_id", &env.client_id),
        ("client_secret", &env.client_secret),
        ("refresh_token", &refresh),
    ])
    .await
    .assert_status(200);
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_keeps_working_until_it_expires() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let first = env
        .delegated(&format!("adele@{DOMAIN}"), "offline_access Mail.Send")
        .await;
    let old = first["refresh_token"].as_str().unwrap().to_string();
    assert!(first["scope"]
        .as_str()
        .unwrap()
        .contains("https://graph.microsoft.com/Mail.Send"));
    let refresh = |token: String| {
        let env = &env;
        async move {
            env.token_form(&[
                ("grant_type", "refresh_token"),
                ("client_id", &env.client_id),
                ("client_secret", &env.client_secret),
                ("refresh_token", &token),
            ])
            .await
        }
    };
    let second = refresh(old.clone()).await.assert_status(200);
    let new = second.json["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new, old, "every refresh returns a new refresh token");
    refresh(old.clone()).await.assert_status(200);
    let claims = claims(second.json["access_token"].as_str().unwrap());
    assert!(claims["scp"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "Mail.Send"));
    assert_eq!(claims["idtyp"], "user");

    // A refresh token past its lifetime fails with 700082.
    let mut settings = env.control_get("/settings").await;
    settings["refreshTokenLifetimeSeconds"] = json!(1);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);
    let short = refresh(new).await.assert_status(200).json["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = refresh(short).await.assert_status(400);
    assert_eq!(expired.aadsts(), 700082);
}

#[tokio::test]
async fn device_code_goes_pending_slow_down_approved_and_is_single_use() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let code = device_code(&env, "organizations", "offline_access User.Read").await;
    for key in ["user_code", "device_code", "verification_uri", "message"] {
        assert!(code[key].is_string(), "{key}");
    }
    assert_eq!(code["expires_in"], 900);
    assert_eq!(code["interval"], 5);
    let code_value = code["device_code"].as_str().unwrap();
    let pending = poll_device(&env, code_value).await.assert_status(400);
    assert_eq!(
        (pending.json["error"].as_str().unwrap(), pending.aadsts()),
        ("authorization_pending", 70016)
    );
    let too_fast = poll_device(&env, code_value).await.assert_status(400);
    assert_eq!(too_fast.json["error"], "slow_down");
    env.control_post(
        &format!(
            "/devicecodes/{}/approve",
            code["user_code"].as_str().unwrap()
        ),
        json!({"user": format!("adele@{DOMAIN}")}),
    )
    .await
    .assert_status(204);
    let tokens = poll_device(&env, code_value).await.assert_status(200).json;
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(
        claims(tokens["access_token"].as_str().unwrap())["tid"],
        TENANT
    );
    let again = poll_device(&env, code_value).await.assert_status(400);
    assert_eq!(again.json["error"], "invalid_grant");
}

#[tokio::test]
async fn device_codes_can_be_declined_and_expire() {
    let env = Env::standard().await;
    let mut settings = env.control_get("/settings").await;
    settings["deviceCodeLifetimeSeconds"] = json!(1);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);
    let declined = device_code(&env, TENANT, "User.Read").await;
    env.control_post(
        &format!(
            "/devicecodes/{}/decline",
            declined["user_code"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(
        poll_device(&env, declined["device_code"].as_str().unwrap())
            .await
            .json["error"],
        "authorization_declined"
    );
    let expiring = device_code(&env, TENANT, "User.Read").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        poll_device(&env, expiring["device_code"].as_str().unwrap())
            .await
            .json["error"],
        "expired_token"
    );
}

#[tokio::test]
async fn authorization_code_with_pkce_checks_the_verifier_and_is_single_use() {
    use base64::Engine;
    use sha2::Digest;
    let env = Env::standard().await;
    env.user("adele", true).await;
    let verifier = "the-code-verifier-of-at-least-43-characters-long-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authorize = |state: &'static str| {
        let url = reqwest::Url::parse_with_params(
            &env.url(&format!("/{TENANT}/oauth2/v2.0/authorize")),
            &[
                ("client_id", env.client_id.as_str()),
                ("response_type", "code"),
                ("redirect_uri", "http://127.0.0.1:9/callback"),
                ("scope", "offline_access User.Read"),
                ("state", state),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("login_hint", "adele@contoso.onmicrosoft.com"),
            ],
        )
        .unwrap();
        client().get(url).send()
    };
    let redirect = authorize("s1").await.unwrap();
    assert_eq!(redirect.status(), 302);
    let location = reqwest::Url::parse(redirect.headers()["location"].to_str().unwrap()).unwrap();
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(params["state"], "s1");
    let redeem = |code: String, verifier: &'static str| {
        let env = &env;
        async move {
            env.token_form(&[
                ("grant_type", "authorization_code"),
                ("client_id", &env.client_id),
                ("client_secret", &env.client_secret),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/callback"),
                ("code_verifier", verifier),
            ])
            .await
        }
    };
    let wrong = redeem(
        params["code"].clone(),
        "another-verifier-entirely-0123456789-0123456789",
    )
    .await
    .assert_status(400);
    assert_eq!(wrong.aadsts(), 501481);
    let redirect = authorize("s2").await.unwrap();
    let location = reqwest::Url::parse(redirect.headers()["location"].to_str().unwrap()).unwrap();
    let code: String = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let tokens = redeem(code.clone(), verifier).await.assert_status(200).json;
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(
        redeem(code, verifier).await.assert_status(400).aadsts(),
        54005
    );
}

#[tokio::test]
async fn admin_consent_grants_the_requested_permissions_or_reports_the_refusal() {
    let env = Env::with(&[], &[]).await;
    let pending = env
        .control_post(&format!("/tenants/{TENANT}/apps"), json!({"displayName": "needs consent", "applicationPermissions": ["User.Read.All"], "adminConsented": false, "redirectUris": ["http://127.0.0.1:9/consent"]}))
        .await
        .assert_status(201)
        .json;
    let (client_id, secret) = (
        pending["clientId"].as_str().unwrap(),
        pending["clientSecret"].as_str().unwrap(),
    );
    assert_eq!(
        app_only(&env, client_id, secret)
            .await
            .assert_status(400)
            .aadsts(),
        700016,
        "not in the tenant before consent"
    );
    let consent = |state: &'static str| {
        let url = reqwest::Url::parse_with_params(
            &env.url(&format!("/{TENANT}/v2.0/adminconsent")),
            &[
                ("client_id", client_id),
                ("scope", GRAPH_DEFAULT),
                ("redirect_uri", "http://127.0.0.1:9/consent"),
                ("state", state),
            ],
        )
        .unwrap();
        client().get(url).send()
    };
    env.control_put(
        &format!("/tenants/{TENANT}/consent"),
        json!({"outcome": "refuse"}),
    )
    .await
    .assert_status(204);
    let refused = consent("r").await.unwrap();
    let location = reqwest::Url::parse(refused.headers()["location"].to_str().unwrap()).unwrap();
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(
        params["admin_consent"], "True",
        "Microsoft sends admin_consent=True with errors too"
    );
    assert_eq!(params["error"], "consent_required");
    assert!(params["error_description"].starts_with("AADSTS65004"));
    assert_eq!(app_only(&env, client_id, secret).await.status, 400);

    env.control_put(
        &format!("/tenants/{TENANT}/consent"),
        json!({"outcome": "approve"}),
    )
    .await
    .assert_status(204);
    let granted = consent("g").await.unwrap();
    let location = reqwest::Url::parse(granted.headers()["location"].to_str().unwrap()).unwrap();
    let params: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(
        (
            params["admin_consent"].as_str(),
            params["tenant"].as_str(),
            params["state"].as_str()
        ),
        ("True", TENANT, "g")
    );
    assert!(!params.contains_key("error"));
    let answer = app_only(&env, client_id, secret).await.assert_status(200);
    assert_eq!(
        claims(answer.json["access_token"].as_str().unwrap())["roles"],
        json!(["User.Read.All"])
    );
}

#[tokio::test]
async fn a_disabled_user_gets_no_tokens() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let tokens = env
        .delegated(&format!("adele@{DOMAIN}"), "offline_access User.Read")
        .await;
    let response = env
        .http
        .patch(env.url(&format!("/_emulator/tenants/{TENANT}/users/adele@{DOMAIN}")))
        .json(&json!({"accountEnabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let refused = env
        .token_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", &env.client_id),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ])
        .await
        .assert_status(400);
    assert_eq!(refused.aadsts(), 50057);
}

/// Standing in for a national cloud (learn.microsoft.com/graph/deployments), the identity
/// platform issues Graph tokens only for that cloud's Graph (`https://graph.microsoft.us`
/// here; the global resource is unknown there: AADSTS500011) and Graph accepts only that
/// audience (a global token gets 401).
#[tokio::test]
async fn a_national_cloud_issues_and_accepts_only_its_own_graph_audience() {
    let env = Env::standard().await;
    let global_token = env.app_token().await;
    let settings = graph_emulator::Settings {
        cloud: graph_emulator::world::Cloud::Usgov,
        ..env.emulator.shared().settings()
    };
    env.emulator.shared().set_settings(settings);
    let client = |scope: &'static str| {
        let env = &env;
        async move {
            env.token_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &env.client_id),
                ("client_secret", &env.client_secret),
                ("scope", scope),
            ])
            .await
        }
    };
    let refused = client("https://graph.microsoft.com/.default")
        .await
        .assert_status(400);
    assert!(
        refused.json["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS500011:"),
        "{}",
        refused.json
    );
    let issued = client("https://graph.microsoft.us/.default")
        .await
        .assert_status(200);
    let token = issued.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        graph_emulator::jwt::decode_claims(&token).unwrap()["aud"],
        "https://graph.microsoft.us"
    );
    env.get("/users", &token).await.assert_status(200);
    let wrong = env.get("/users", &global_token).await.assert_status(401);
    assert_eq!(wrong.json["error"]["code"], "InvalidAuthenticationToken");
}

/// Every Graph answer carries a `request-id` and echoes the caller's `client-request-id`
/// (learn.microsoft.com/graph/best-practices-concept#reliability-and-support), and the
/// request log keeps both.
#[tokio::test]
async fn graph_answers_carry_request_ids() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let answer = env
        .http
        .get(format!("{}/users", env.emulator.graph_url()))
        .bearer_auth(&token)
        .header("client-request-id", "6c1f7b4a-0d2e-4f55-9a61-2b3c4d5e6f70")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["client-request-id"],
        "6c1f7b4a-0d2e-4f55-9a61-2b3c4d5e6f70"
    );
    let request_id = answer.headers()["request-id"].to_str().unwrap().to_string();
    let logged = env
        .emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1.0/users")
        .unwrap();
    assert_eq!(logged.request_id, request_id);
    assert_eq!(
        logged.client_request_id.as_deref(),
        Some("6c1f7b4a-0d2e-4f55-9a61-2b3c4d5e6f70")
    );
}
