//! The Teams Developer Portal subset: package import, bots, the sideloading policy.

use graph_emulator::package::{make_png, write_zip};
use serde_json::{json, Value};

use crate::helpers::{Answer, Env, DOMAIN, TENANT};

fn package(manifest: &Value, color: (u32, u32)) -> Vec<u8> {
    let manifest = serde_json::to_vec(manifest).unwrap();
    let color = make_png(color.0, color.1);
    let outline = make_png(32, 32);
    write_zip(&[
        ("manifest.json", &manifest),
        ("color.png", &color),
        ("outline.png", &outline),
    ])
}

fn manifest(id: &str) -> Value {
    json!({
        "manifestVersion": "1.17",
        "version": "1.0.0",
        "id": id,
        "name": {"short": "Heartbeat", "full": "tenantd heartbeat bot"},
        "description": {"short": "Keeps demo tenants alive", "full": "Keeps demo tenants alive."},
        "developer": {
            "name": "tenantd",
            "websiteUrl": "https://tenantd.example/",
            "privacyUrl": "https://tenantd.example/privacy",
            "termsOfUseUrl": "https://tenantd.example/terms"
        },
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": "#4464EE",
        "bots": [{"botId": "2f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f", "scopes": ["personal"]}],
    })
}

async fn portal_token(env: &Env) -> String {
    let tokens = env
        .delegated(
            &format!("adele@{DOMAIN}"),
            "https://dev.teams.microsoft.com/AppDefinitions.ReadWrite",
        )
        .await;
    tokens["access_token"].as_str().unwrap().to_string()
}

async fn import(env: &Env, token: &str, body: Vec<u8>, overwrite: bool) -> Answer {
    Answer::from(
        env.http
            .post(format!(
                "{}/api/appdefinitions/v2/import?overwriteIfAppAlreadyExists={overwrite}",
                env.emulator.devportal_url()
            ))
            .bearer_auth(token)
            .header("content-type", "application/zip")
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn packages_are_validated_imported_once_and_overwritten_on_request() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let token = portal_token(&env).await;
    let id = "8e460676-ae3f-4b1e-8790-ee0fb5d6148f";
    let imported = import(&env, &token, package(&manifest(id), (192, 192)), false)
        .await
        .assert_status(200);
    assert_eq!(imported.json["appId"], id);
    assert_eq!(imported.json["tenantId"], TENANT);
    assert!(imported.json["teamsAppId"].is_string());
    assert_eq!(
        imported.json["bots"][0]["botId"],
        "2f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f"
    );
    import(&env, &token, package(&manifest(id), (192, 192)), false)
        .await
        .assert_status(409);
    let again = import(&env, &token, package(&manifest(id), (192, 192)), true)
        .await
        .assert_status(200);
    assert_eq!(again.json["teamsAppId"], imported.json["teamsAppId"]);

    let not_guid = import(
        &env,
        &token,
        package(&manifest("my-app"), (192, 192)),
        false,
    )
    .await
    .assert_status(400);
    assert_eq!(not_guid.json["error"]["message"], "App Id must be a GUID");
    let wrong_icon = import(
        &env,
        &token,
        package(
            &manifest("0b1e2d3c-4a5b-4c6d-8e7f-9a0b1c2d3e4f"),
            (100, 100),
        ),
        false,
    )
    .await
    .assert_status(400);
    assert!(wrong_icon.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("192x192"));
    // The published schema's rules (microsoft/json-schemas teams/v1.30/
    // MicrosoftTeams.schema.json): each broken one is a 400 naming the property.
    let fresh = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";
    type Breaks = fn(&mut Value);
    let cases: Vec<(&str, Breaks)> = vec![
        ("name.short", |m| m["name"]["short"] = json!("x".repeat(31))),
        ("description.full", |m| {
            m["description"].as_object_mut().unwrap().remove("full");
        }),
        ("developer.privacyUrl", |m| {
            m["developer"]["privacyUrl"] = json!("privacy")
        }),
        ("accentColor", |m| m["accentColor"] = json!("blue")),
        ("version", |m| m["version"] = json!("1.0")),
        ("manifestVersion", |m| m["manifestVersion"] = json!("1.18")),
        ("scopes", |m| m["bots"][0]["scopes"] = json!(["channel"])),
    ];
    for (property, change) in cases {
        let mut broken = manifest(fresh);
        change(&mut broken);
        let refused = import(&env, &token, package(&broken, (192, 192)), false)
            .await
            .assert_status(400);
        assert!(
            refused.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(property),
            "{property}: {}",
            refused.json
        );
    }
    import(&env, &token, b"not a zip".to_vec(), false)
        .await
        .assert_status(400);
    let no_manifest = write_zip(&[("readme.txt", b"hi")]);
    import(&env, &token, no_manifest, false)
        .await
        .assert_status(400);
}

#[tokio::test]
async fn bots_register_once_and_the_policy_reports_sideloading() {
    let env = Env::standard().await;
    env.user("adele", true).await;
    let token = portal_token(&env).await;
    let bot = json!({"botId": "2f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f", "name": "Heartbeat", "description": "", "messagingEndpoint": "https://bots.example.com/api/messages", "callingEndpoint": ""});
    let post = |body: Value| {
        env.http
            .post(format!("{}/api/botframework", env.emulator.devportal_url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    assert_eq!(post(bot.clone()).await.unwrap().status(), 201);
    assert_eq!(post(bot.clone()).await.unwrap().status(), 409);
    let mut insecure = bot.clone();
    insecure["botId"] = json!("3f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f");
    insecure["messagingEndpoint"] = json!("http://bots.example.com/api/messages");
    assert_eq!(post(insecure).await.unwrap().status(), 400);
    let read = env
        .http
        .get(format!(
            "{}/api/botframework/2f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f",
            env.emulator.devportal_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let missing = env
        .http
        .get(format!(
            "{}/api/botframework/4f0b7c1e-4a3d-4b8e-9c6f-1a2b3c4d5e6f",
            env.emulator.devportal_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let policy = |token: String| {
        let env = &env;
        async move {
            Answer::from(
                env.http
                    .get(format!(
                        "{}/api/usersettings/mtUserAppPolicy",
                        env.emulator.devportal_url()
                    ))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    assert_eq!(
        policy(token.clone()).await.assert_status(200).json["value"]["isSideloadingAllowed"],
        true
    );
    env.control_put(
        &format!("/tenants/{TENANT}/sideloading"),
        json!({"allowed": false}),
    )
    .await
    .assert_status(204);
    assert_eq!(
        policy(token.clone()).await.json["value"]["isSideloadingAllowed"],
        false
    );
    // Graph tokens and app-only tokens are refused.
    assert_eq!(policy(env.app_token().await).await.status, 401);
}
