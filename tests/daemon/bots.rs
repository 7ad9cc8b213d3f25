//! Teams bot provisioning (seed 004, issue #20), so far: the Teams app package tenantd builds
//! is taken by the Developer Portal (the emulator checks it by the published manifest schema's
//! rules on its own), through the Graph client with a delegated Developer Portal token from
//! the stored refresh token; and the sideloading check, by API and by CLI.

use std::sync::Arc;

use graph_emulator::world::{AppSeed, TenantSeed, UserSeed};
use tenantd::graph::{GraphClient, GraphError};
use tenantd::teams_package::{self, BotApp};
use tenantd::vault::connections::Connection;
use tenantd::vault::identity::IdentityClient;
use tenantd::vault::tokens::TokenService;
use tenantd::vault::Keyring;

use crate::helpers::{combined_output, tenantd_command, test_config, TestDb};
use crate::on_both_backends;

const TENANT: &str = "3f2a9c1e-7b4d-4e8f-a6c5-2d1b0e9f8a7c";
const USER: &str = "megan@fabrikam.onmicrosoft.com";
const PORTAL_SCOPE: &str = "https://dev.teams.microsoft.com/AppDefinitions.ReadWrite";

struct Env {
    emulator: graph_emulator::Emulator,
    config: tenantd::config::Config,
    graph: GraphClient,
    megan: Connection,
}

async fn env(db: &TestDb) -> Env {
    let emulator = graph_emulator::Emulator::start_local().await.unwrap();
    let now = graph_emulator::clock::now();
    let client_id = {
        let mut world = emulator.shared().world();
        world
            .seed_tenant(TenantSeed {
                id: Some(TENANT.into()),
                domain: "fabrikam.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .unwrap();
        world
            .seed_user(
                TENANT,
                UserSeed {
                    user_principal_name: USER.into(),
                    display_name: None,
                    usage_location: Some("DE".into()),
                    license: None,
                },
                now,
                time::Duration::ZERO,
            )
            .unwrap();
        let (client_id, _) = world
            .seed_app(
                TENANT,
                AppSeed {
                    client_id: None,
                    client_secret: None,
                    public_client: true,
                    display_name: Some("bot provisioning".into()),
                    redirect_uris: vec![],
                    application_permissions: vec![],
                    delegated_permissions: vec![
                        "User.Read".into(),
                        "Application.ReadWrite.All".into(),
                        PORTAL_SCOPE.into(),
                    ],
                    admin_consented: true,
                },
                now,
            )
            .unwrap();
        client_id
    };
    let mut config = test_config(db);
    config.graph.base_url = url::Url::parse(&emulator.graph_url()).unwrap();
    config.graph.developer_portal_url = url::Url::parse(&emulator.devportal_url()).unwrap();
    config.identity.authority = url::Url::parse(&emulator.base_url()).unwrap();
    let keys = Arc::new(Keyring::load(&config.secrets.key_file).unwrap());
    let store = db.store().await;
    store.migrate().await.unwrap();
    // One sign-in with User.Read (seed 004); the Developer Portal token comes later from the
    // refresh token, for its own resource.
    let megan = crate::helpers::sign_in_delegated(
        &store,
        &keys,
        &emulator,
        TENANT,
        &client_id,
        USER,
        "offline_access User.Read",
    )
    .await;
    let tokens = Arc::new(TokenService::new(
        store,
        keys,
        IdentityClient::configured(&config),
    ));
    let graph = GraphClient::new(&config.graph, tokens);
    Env {
        emulator,
        config,
        graph,
        megan,
    }
}

fn bot_app(app_id: &str) -> BotApp {
    BotApp {
        app_id: app_id.into(),
        name: "Fabrikam Helpdesk".into(),
        description: "Answers helpdesk questions in Teams.".into(),
        description_full: None,
        developer_name: "Fabrikam".into(),
        developer_url: "https://fabrikam.example".into(),
        accent_color: "#107c10".into(),
        scopes: vec!["personal".into(), "team".into()],
    }
}

async fn a_built_package_is_imported_once_and_replaced_on_request(db: TestDb) {
    let env = env(&db).await;
    let app_id = "6c1f0a2b-3d4e-4f5a-8b9c-0d1e2f3a4b5c";
    let package = teams_package::build(&bot_app(app_id)).unwrap();
    let imported = env
        .graph
        .import_app_package(&env.megan, package.clone(), false)
        .await
        .unwrap();
    assert_eq!(imported["appId"], app_id);
    assert_eq!(imported["tenantId"], TENANT);
    assert_eq!(imported["bots"][0]["botId"], app_id);
    assert_eq!(imported["manifestVersion"], teams_package::MANIFEST_VERSION);
    let teams_app_id = imported["teamsAppId"].as_str().unwrap().to_string();
    // The same app again is a conflict, never a second app; with overwrite it is replaced.
    let again = env
        .graph
        .import_app_package(&env.megan, package.clone(), false)
        .await;
    assert!(
        matches!(again, Err(GraphError::Conflict { .. })),
        "{again:?}"
    );
    let replaced = env
        .graph
        .import_app_package(&env.megan, package, true)
        .await
        .unwrap();
    assert_eq!(replaced["teamsAppId"], teams_app_id);
    let world = env.emulator.shared().world();
    assert_eq!(world.tenants[TENANT].app_definitions.len(), 1);
}

async fn sideloading_is_reported_by_api_and_cli(db: TestDb) {
    let env = env(&db).await;
    assert!(env.graph.sideloading_allowed(&env.megan).await.unwrap());
    let database_url = db.url().to_string();
    let cli = move |config: &tenantd::config::Config, connection: &str| {
        let output = tenantd_command()
            .args(["--database-url", &database_url])
            .args(["bot", "check-sideloading", "--connection", connection])
            .env("TENANTD_SECRETS__KEY_FILE", &config.secrets.key_file)
            .env(
                "TENANTD_IDENTITY__AUTHORITY",
                config.identity.authority.as_str(),
            )
            .env("TENANTD_GRAPH__BASE_URL", config.graph.base_url.as_str())
            .env(
                "TENANTD_GRAPH__DEVELOPER_PORTAL_URL",
                config.graph.developer_portal_url.as_str(),
            )
            .output()
            .unwrap();
        (output.status.code(), combined_output(&output))
    };
    let (config, id) = (env.config.clone(), env.megan.id.clone());
    let (code, text) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&config, &id)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("custom app upload is allowed"), "{text}");

    env.emulator
        .shared()
        .world()
        .tenants
        .get_mut(TENANT)
        .unwrap()
        .sideloading_allowed = false;
    assert!(!env.graph.sideloading_allowed(&env.megan).await.unwrap());
    let (config, id) = (env.config.clone(), env.megan.id.clone());
    let (code, text) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&config, &id)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("custom app upload is off") && text.contains("Setup policies"),
        "the tenant admin's steps: {text}"
    );
    // A connection that does not exist is a usage error naming it.
    let config = env.config.clone();
    let (code, text) = tokio::task::spawn_blocking(move || cli(&config, "no-such-connection"))
        .await
        .unwrap();
    assert_eq!(code, Some(2), "{text}");
}

on_both_backends!(
    a_built_package_is_imported_once_and_replaced_on_request,
    sideloading_is_reported_by_api_and_cli,
);
