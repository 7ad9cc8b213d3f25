//! Teams bot provisioning (seed 004, issue #20): the Teams app package tenantd builds is taken
//! by the Developer Portal (the emulator checks it by the published manifest schema's rules on
//! its own), through the Graph client with a delegated Developer Portal token from the stored
//! refresh token; the sideloading check, by API and by CLI; provisioning as an operation run
//! of recorded steps that stops with the reason a human must act on, resumes without creating
//! anything twice, and shows the client secret once, never storing it in plaintext.

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
    env_with(db, true).await
}

/// [`env`]; `portal`: whether the app holds the Developer Portal's delegated permission.
async fn env_with(db: &TestDb, portal: bool) -> Env {
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
                    delegated_permissions: ["User.Read", "Application.ReadWrite.All", PORTAL_SCOPE]
                        .into_iter()
                        .filter(|permission| portal || *permission != PORTAL_SCOPE)
                        .map(str::to_string)
                        .collect(),
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

/// Turns the tenant's custom app upload (`mtUserAppPolicy`) on or off in the emulator.
fn set_sideloading(env: &Env, allowed: bool) {
    env.emulator
        .shared()
        .world()
        .tenants
        .get_mut(TENANT)
        .unwrap()
        .sideloading_allowed = allowed;
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
    let (code, text) = check_sideloading_cli(&db, &env.config, &env.megan.id).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("custom app upload is allowed"), "{text}");

    set_sideloading(&env, false);
    assert!(!env.graph.sideloading_allowed(&env.megan).await.unwrap());
    let (code, text) = check_sideloading_cli(&db, &env.config, &env.megan.id).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("custom app upload is off") && text.contains("Setup policies"),
        "the tenant admin's steps: {text}"
    );
    // A connection that does not exist is a usage error naming it.
    let (code, text) = check_sideloading_cli(&db, &env.config, "no-such-connection").await;
    assert_eq!(code, Some(2), "{text}");
}

/// `tenantd bot check-sideloading --connection ID` against `config`'s emulator, off the
/// async threads (the emulator answers on them); its exit code and output.
async fn check_sideloading_cli(
    db: &TestDb,
    config: &tenantd::config::Config,
    connection: &str,
) -> (Option<i32>, String) {
    let mut command = tenantd_command();
    command
        .args(["--database-url", db.url()])
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
        );
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (output.status.code(), combined_output(&output))
}

/// Starts a provisioning run of `bot` and runs the queue until it is done; the run's state.
async fn provision_run(
    app: &crate::helpers::TestApp,
    store: &tenantd::store::Store,
    bot: &tenantd::bots::Bot,
) -> tenantd::runs::OperationRun {
    let job = tenantd::jobs::bot_provision::BotProvision {
        bot_id: bot.id.clone(),
        tenant_id: bot.tenant_id.clone(),
        run_id: None,
    };
    run_to_end(app, store, &job, &bot.tenant_id).await
}

/// Starts an operation run of `job` for `tenant`, runs the queue until it is done; the run.
async fn run_to_end<J: tenantd::jobs::Job>(
    app: &crate::helpers::TestApp,
    store: &tenantd::store::Store,
    job: &J,
    tenant: &str,
) -> tenantd::runs::OperationRun {
    let new = tenantd::queue::NewJob {
        tenant_id: tenant.to_string(),
        dedupe_key: None,
        ..tenantd::jobs::new_job(job)
    };
    let queue = tenantd::queue::Queue::new(store.clone());
    let run = match tenantd::runs::start(store, &queue, J::KIND, tenant, new)
        .await
        .unwrap()
    {
        tenantd::runs::Started::New(run) => run,
        other => panic!("{other:?}"),
    };
    app.run_queue_until_empty().await;
    tenantd::runs::get(store, &run.id).await.unwrap().unwrap()
}

fn new_bot<'a>(megan: &'a Connection, name: &'a str) -> tenantd::bots::NewBot<'a> {
    tenantd::bots::NewBot {
        tenant_id: &megan.tenant_id,
        connection_id: &megan.id,
        user_name: megan.user_name.as_deref(),
        name,
        endpoint: "https://bots.fabrikam.example/api/messages",
        description: "Answers helpdesk questions in Teams.",
        single_tenant: false,
        package: None,
        secret_name: "tenantd bot",
        secret_days: 30,
    }
}

async fn a_bot_is_provisioned_once_and_its_secret_shown_once(db: TestDb) {
    let env = env(&db).await;
    let app = crate::helpers::spawn_app_with(env.config.clone()).await;
    let store = db.store().await;
    let keys = Keyring::load(&env.config.secrets.key_file).unwrap();
    // Custom app upload off: the run stops at step 2 with the reason; nothing is created.
    set_sideloading(&env, false);
    let bot = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    let run = provision_run(&app, &store, &bot).await;
    assert_eq!(
        (run.state.as_str(), run.reason.as_deref()),
        ("failed", Some("sideloading_disabled")),
        "{run:?}"
    );
    let stopped = tenantd::bots::get(&store, &bot.id).await.unwrap();
    assert_eq!(stopped.state, "failed");
    assert!(stopped.application_id.is_none(), "{stopped:?}");
    assert!(env.emulator.shared().world().tenants[TENANT]
        .applications
        .is_empty());

    // Turned on, the same bot resumes and is provisioned.
    set_sideloading(&env, true);
    let resumed = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    assert_eq!(resumed.id, bot.id, "the same name resumes the same bot");
    let run = provision_run(&app, &store, &resumed).await;
    assert_eq!(run.state, "succeeded", "{run:?}");
    let ready = tenantd::bots::get(&store, &bot.id).await.unwrap();
    assert_eq!(
        (ready.state.as_str(), ready.step.as_deref()),
        ("ready", Some("bot_registered"))
    );
    let app_id = ready.app_id.clone().unwrap();
    {
        let world = env.emulator.shared().world();
        let tenant = &world.tenants[TENANT];
        assert_eq!(tenant.applications.len(), 1);
        let application = tenant.applications.values().next().unwrap();
        assert_eq!(application["uniqueName"], ready.unique_name());
        assert_eq!(application["signInAudience"], "AzureADMultipleOrgs");
        let credentials = application["passwordCredentials"].as_array().unwrap();
        assert_eq!(credentials.len(), 1);
        // The name and lifetime asked for (30 days here).
        assert_eq!(credentials[0]["displayName"], "tenantd bot");
        let end =
            chrono::DateTime::parse_from_rfc3339(credentials[0]["endDateTime"].as_str().unwrap())
                .unwrap();
        let days = (end.timestamp() - chrono::Utc::now().timestamp()) / 86_400;
        assert!((29..=30).contains(&days), "{end}");
        assert_eq!(tenant.app_definitions.len(), 1);
        let definition = tenant.app_definitions.values().next().unwrap();
        assert_eq!(definition["appId"], app_id.as_str());
        assert_eq!(
            Some(definition["teamsAppId"].as_str().unwrap()),
            ready.teams_app_id.as_deref()
        );
        let registered = &tenant.bots[&app_id];
        assert_eq!(
            registered["messagingEndpoint"],
            "https://bots.fabrikam.example/api/messages"
        );
        assert_eq!(
            registered["configuredChannels"],
            serde_json::json!(["msteams"])
        );
    }
    let link = ready.install_link().unwrap();
    assert!(link.starts_with(&format!("https://teams.microsoft.com/l/app/{}?installAppPackage=true&webjoin=true&appTenantId={TENANT}&login_hint=megan%40fabrikam", ready.teams_app_id.as_deref().unwrap())), "{link}");

    // Each attempt is counted by result and the step it ended at.
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    for series in [
        r#"tenantd_bot_provisioning_runs_total{result="failed",step="sideloading"}"#,
        r#"tenantd_bot_provisioning_runs_total{result="succeeded",step="bot_registration"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
    // The secret: sealed in the database, never in plaintext; shown once.
    let secret = tenantd::bots::take_secret(&store, &keys, &bot.id)
        .await
        .unwrap()
        .unwrap();
    assert!(secret.expose().len() >= 16);
    let raw = db.raw_contents().await;
    assert!(
        !raw.windows(secret.expose().len())
            .any(|w| w == secret.expose().as_bytes()),
        "the client secret is in the database in plaintext"
    );
    assert!(
        tenantd::bots::take_secret(&store, &keys, &bot.id)
            .await
            .unwrap()
            .is_none(),
        "shown once"
    );
    assert!(
        !tenantd::bots::get(&store, &bot.id)
            .await
            .unwrap()
            .secret_held
    );
    app.stop().await.unwrap();
}

/// An attempt that stopped after Graph and the portal answered but before tenantd recorded it
/// (a crash): the application, a client secret, the Teams app and the bot registration exist
/// at Microsoft, tenantd's row knows none of them. The resumed run adopts the application by
/// its unique name, replaces the unrecorded secret, re-imports the same app id and updates the
/// existing bot (409): one of each at the end.
async fn a_resumed_run_creates_nothing_twice(db: TestDb) {
    let env = env(&db).await;
    let app = crate::helpers::spawn_app_with(env.config.clone()).await;
    let store = db.store().await;
    let bot = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    let application = env
        .graph
        .upsert_application(
            &env.megan,
            &bot.unique_name(),
            &serde_json::json!({"displayName": "Helpdesk"}),
        )
        .await
        .unwrap();
    let (application_id, app_id) = (
        application["id"].as_str().unwrap().to_string(),
        application["appId"].as_str().unwrap().to_string(),
    );
    let lost = env
        .graph
        .add_password(&env.megan, &application_id, "tenantd bot", None)
        .await
        .unwrap();
    env.graph
        .import_app_package(
            &env.megan,
            teams_package::build(&bot_app(&app_id)).unwrap(),
            false,
        )
        .await
        .unwrap();
    env.graph
        .register_bot(&env.megan, &serde_json::json!({"botId": app_id, "name": "Helpdesk", "messagingEndpoint": "https://old.fabrikam.example/api/messages"}))
        .await
        .unwrap();

    let run = provision_run(&app, &store, &bot).await;
    assert_eq!(run.state, "succeeded", "{run:?}");
    let ready = tenantd::bots::get(&store, &bot.id).await.unwrap();
    assert_eq!(
        ready.app_id.as_deref(),
        Some(app_id.as_str()),
        "the application was adopted"
    );
    {
        let world = env.emulator.shared().world();
        let tenant = &world.tenants[TENANT];
        assert_eq!(tenant.applications.len(), 1);
        let credentials = tenant.applications[&application_id]["passwordCredentials"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(credentials.len(), 1, "{credentials:?}");
        assert_ne!(
            credentials[0]["keyId"], lost["keyId"],
            "the unrecorded secret was removed"
        );
        assert_eq!(
            Some(credentials[0]["keyId"].as_str().unwrap()),
            ready.secret_key_id.as_deref()
        );
        assert_eq!(tenant.app_definitions.len(), 1);
        assert_eq!(tenant.bots.len(), 1);
        assert_eq!(
            tenant.bots[&app_id]["messagingEndpoint"], "https://bots.fabrikam.example/api/messages",
            "409 updated the bot"
        );
    }
    app.stop().await.unwrap();
}

/// The Developer Portal's permission not consented: the run stops at step 1 with
/// `consent_required` and the command that prints the admin consent URL; nothing is created.
async fn missing_consent_stops_the_run_before_anything_is_created(db: TestDb) {
    let env = env_with(&db, false).await;
    let app = crate::helpers::spawn_app_with(env.config.clone()).await;
    let store = db.store().await;
    let bot = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    let run = provision_run(&app, &store, &bot).await;
    assert_eq!(
        (run.state.as_str(), run.reason.as_deref()),
        ("failed", Some("consent_required")),
        "{run:?}"
    );
    let message = run.message.unwrap_or_default();
    assert!(
        message.contains("Developer Portal") && message.contains("tenantd tenant consent-url"),
        "{message}"
    );
    let stopped = tenantd::bots::get(&store, &bot.id).await.unwrap();
    assert_eq!(
        (stopped.state.as_str(), stopped.step.as_deref()),
        ("failed", None)
    );
    assert!(env.emulator.shared().world().tenants[TENANT]
        .applications
        .is_empty());
    app.stop().await.unwrap();
}

/// Delete removes exactly what provisioning made (the bot registration, the Teams app, the app
/// registration) and leaves another app of the tenant alone; the name is free again.
async fn delete_removes_exactly_what_was_created(db: TestDb) {
    use tenantd::jobs::bot_delete::BotDelete;
    let env = env(&db).await;
    let app = crate::helpers::spawn_app_with(env.config.clone()).await;
    let store = db.store().await;
    // Someone else's app in the tenant.
    let other = env
        .graph
        .upsert_application(
            &env.megan,
            "someone-else",
            &serde_json::json!({"displayName": "Other"}),
        )
        .await
        .unwrap();
    let bot = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    assert_eq!(provision_run(&app, &store, &bot).await.state, "succeeded");
    let job = BotDelete {
        bot_id: bot.id.clone(),
        tenant_id: bot.tenant_id.clone(),
        run_id: None,
    };
    let run = run_to_end(&app, &store, &job, &bot.tenant_id).await;
    assert_eq!(run.state, "succeeded", "{run:?}");
    let gone = tenantd::bots::get(&store, &bot.id).await.unwrap();
    assert_eq!(
        (gone.state.as_str(), gone.step.as_deref()),
        ("deleted", Some("deleted"))
    );
    {
        let world = env.emulator.shared().world();
        let tenant = &world.tenants[TENANT];
        assert!(tenant.bots.is_empty());
        assert!(tenant.app_definitions.is_empty());
        assert_eq!(tenant.applications.len(), 1, "only the other app is left");
        assert!(tenant
            .applications
            .contains_key(other["id"].as_str().unwrap()));
    }
    assert!(tenantd::bots::list(&store).await.unwrap().is_empty());
    let again = tenantd::bots::create_or_resume(&store, &new_bot(&env.megan, "Helpdesk"))
        .await
        .unwrap();
    assert_ne!(again.id, bot.id, "a deleted bot's name makes a new bot");
    app.stop().await.unwrap();
}

/// The operator's own package: imported with its ids set to the bot's, its own name kept.
async fn a_given_package_is_imported_as_the_bots(db: TestDb) {
    let env = env(&db).await;
    let app = crate::helpers::spawn_app_with(env.config.clone()).await;
    let store = db.store().await;
    let mut own = bot_app("11111111-2222-4333-8444-555555555555");
    own.name = "Fabrikam Desk".into();
    let given = teams_package::build(&own).unwrap();
    let bot = tenantd::bots::create_or_resume(
        &store,
        &tenantd::bots::NewBot {
            package: Some(&given),
            ..new_bot(&env.megan, "Helpdesk")
        },
    )
    .await
    .unwrap();
    assert_eq!(provision_run(&app, &store, &bot).await.state, "succeeded");
    let ready = tenantd::bots::get(&store, &bot.id).await.unwrap();
    let app_id = ready.app_id.unwrap();
    {
        let world = env.emulator.shared().world();
        let definition = world.tenants[TENANT]
            .app_definitions
            .values()
            .next()
            .unwrap()
            .clone();
        assert_eq!(definition["appId"], app_id.as_str());
        assert_eq!(definition["bots"][0]["botId"], app_id.as_str());
        assert_eq!(
            definition["shortName"], "Fabrikam Desk",
            "the package's own name"
        );
    }
    app.stop().await.unwrap();
}

on_both_backends!(
    a_built_package_is_imported_once_and_replaced_on_request,
    sideloading_is_reported_by_api_and_cli,
    a_bot_is_provisioned_once_and_its_secret_shown_once,
    a_resumed_run_creates_nothing_twice,
    missing_consent_stops_the_run_before_anything_is_created,
    delete_removes_exactly_what_was_created,
    a_given_package_is_imported_as_the_bots,
);
