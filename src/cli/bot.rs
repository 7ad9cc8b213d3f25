//! `tenantd bot ...`: Teams bot provisioning (seed 004, issue #20): `provision` starts (or
//! resumes) a bot's operation run, waits for the daemon's workers to finish it and prints the
//! credentials once; `list` and `show` read the bots; `check-sideloading` asks whether the
//! signed-in user's tenant lets them upload custom apps at all.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::tenant::{open, print_consent_url};
use super::{exit_code, Access, CliError, CliResult};
use crate::config::Config;
use crate::graph::{GraphClient, GraphError};
use crate::vault::connections::{self, AuthMode};
use crate::vault::identity::IdentityClient;
use crate::vault::tokens::{TokenService, TokenServiceError};

/// `tenantd bot ...`
#[derive(Debug, Subcommand)]
pub(crate) enum BotCommand {
    /// Register a Teams bot for a delegated connection's user: app registration, client
    /// secret, Teams app package, bot registration, as a resumable operation run the daemon
    /// runs; prints BOT_ID, BOT_PASSWORD (once), TEAMS_APP_ID, TENANT_ID and the install link
    Provision {
        /// A delegated connection (`tenantd tenant list` shows ids)
        #[arg(long, value_name = "ID")]
        connection: String,
        /// The bot's name in Teams (at most 30 characters); running again with the same name
        /// resumes that bot
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The bot's messaging endpoint: https://…/api/messages
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// Short description (at most 80 characters)
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Register the app and the bot for this tenant only
        #[arg(long)]
        single_tenant: bool,
        /// Your own Teams app package (zip with manifest.json and the two icons); its `id`
        /// and `botId` are set to the bot's. Checked by the manifest schema's rules first.
        /// Without it, one is generated
        #[arg(long, value_name = "ZIP")]
        package: Option<std::path::PathBuf>,
        /// The client secret's display name in the app registration
        #[arg(long, default_value = "tenantd bot", value_name = "NAME")]
        secret_name: String,
        /// The client secret's lifetime in days (Graph's default: two years)
        #[arg(long, default_value_t = 730, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
        secret_days: u32,
        /// Print JSON instead of text
        #[arg(long, conflicts_with = "env")]
        json: bool,
        /// Print a .env snippet (KEY=VALUE lines) instead of text
        #[arg(long)]
        env: bool,
        /// Give up waiting after this many seconds (the run goes on in the daemon)
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wait_seconds: u64,
    },
    /// The bots tenantd provisioned
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// One bot: its steps, ids and install link (never its secret)
    Show {
        /// Bot id (`tenantd bot list`)
        id: String,
    },
    /// Delete what provisioning created: the bot registration, the Teams app and the app
    /// registration (with its secret), nothing else; as an operation run the daemon runs
    Delete {
        /// Bot id (`tenantd bot list`)
        id: String,
        /// Give up waiting after this many seconds (the run goes on in the daemon)
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        wait_seconds: u64,
    },
    /// Whether the connection's user may upload custom Teams apps (the Developer Portal's
    /// mtUserAppPolicy); exits 1 with the tenant admin's steps when not
    CheckSideloading {
        /// A delegated connection (`tenantd tenant list` shows ids)
        #[arg(long, value_name = "ID")]
        connection: String,
    },
}

/// What a Teams administrator does when custom app upload is off (Teams admin center).
const SIDELOADING_GUIDANCE: &str = "\
custom app upload is off for this user, so a provisioned bot could not be installed.
A Teams administrator of the tenant turns it on in the Teams admin center:
  1. Teams apps > Setup policies > the policy assigned to this user (Global by default):
     \"Upload custom apps\" On.
  2. Teams apps > Manage apps > Org-wide app settings: \"Upload custom apps for personal use\"
     and \"Let users interact with custom apps in preview\" as the organisation allows.
Policy changes can take some hours to reach Teams; run this check again afterwards.";

/// Runs one `bot` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &BotCommand) -> i32 {
    exit_code(match command {
        BotCommand::CheckSideloading { connection } => check_sideloading(config, connection).await,
        BotCommand::Provision {
            connection,
            name,
            endpoint,
            description,
            single_tenant,
            package,
            secret_name,
            secret_days,
            json,
            env,
            wait_seconds,
        } => {
            let asked = Provision {
                secret_name,
                secret_days: *secret_days,
                package: package.as_deref(),
                connection,
                name,
                endpoint,
                description: description.as_deref(),
                single_tenant: *single_tenant,
                output: if *json {
                    Output::Json
                } else if *env {
                    Output::Env
                } else {
                    Output::Text
                },
                wait: Duration::from_secs(*wait_seconds),
            };
            provision(config, &asked).await
        }
        BotCommand::List { json } => list(config, *json).await,
        BotCommand::Show { id } => show(config, id).await,
        BotCommand::Delete { id, wait_seconds } => {
            delete(config, id, Duration::from_secs(*wait_seconds)).await
        }
    })
}

async fn check_sideloading(config: &Config, connection_id: &str) -> CliResult {
    let (store, keys) = open(config, Access::Read).await?;
    let connection = connections::get(&store, connection_id)
        .await
        .map_err(|err| CliError::usage(format!("{err} ({})", err.reason_code())))?;
    if connection.auth_mode != AuthMode::Delegated {
        return Err(CliError::usage(format!(
            "connection {connection_id} is app-only; the Developer Portal acts for a signed-in user: use a delegated connection (`tenantd tenant connect`)"
        )));
    }
    let identity = IdentityClient::configured(config);
    let tokens = Arc::new(TokenService::new(store.clone(), keys, identity.clone()));
    let graph = GraphClient::new(&config.graph, tokens);
    let user = connection
        .user_name
        .as_deref()
        .unwrap_or(&connection.user_id);
    match graph.sideloading_allowed(&connection).await {
        Ok(true) => {
            println!(
                "custom app upload is allowed for {user} in {}: a provisioned bot can be installed",
                connection.tenant_id
            );
            Ok(())
        }
        Ok(false) => {
            println!("{user} in {}: {SIDELOADING_GUIDANCE}", connection.tenant_id);
            Err(CliError::reported())
        }
        Err(GraphError::Token(TokenServiceError::Token(err))) if err.is_consent() => {
            println!(
                "the Teams Developer Portal permission (AppDefinitions.ReadWrite) is not consented for {user} ({}); an admin of {} grants it:",
                err.reason_code(),
                connection.tenant_id
            );
            print_consent_url(
                &store,
                &identity,
                config,
                &connection.tenant_id,
                &connection.client_id,
            )
            .await;
            Err(CliError::reported())
        }
        Err(err) => Err(CliError::failure(format!(
            "cannot read the sideloading policy: {err} ({})",
            err.reason_code()
        ))),
    }
}

/// How `provision` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Text,
    Json,
    Env,
}

/// `bot provision`'s arguments.
struct Provision<'a> {
    connection: &'a str,
    name: &'a str,
    endpoint: &'a str,
    description: Option<&'a str>,
    single_tenant: bool,
    package: Option<&'a std::path::Path>,
    secret_name: &'a str,
    secret_days: u32,
    output: Output,
    wait: Duration,
}

/// How long a run may stay queued before the CLI says the daemon may not be running.
const QUEUED_HINT_AFTER: Duration = Duration::from_secs(20);

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url =
        url::Url::parse(endpoint).map_err(|_| format!("--endpoint {endpoint:?} is not a URL"))?;
    if url.scheme() != "https" {
        return Err("--endpoint must be https:// (Teams only calls bots over https)".into());
    }
    if !url.path().trim_end_matches('/').ends_with("/api/messages") {
        return Err(
            "--endpoint must end in /api/messages (the Bot Framework's messaging path)".into(),
        );
    }
    Ok(())
}

async fn provision(config: &Config, asked: &Provision<'_>) -> CliResult {
    check_endpoint(asked.endpoint).map_err(CliError::usage)?;
    let description = asked
        .description
        .map_or_else(|| format!("{}, a Teams bot.", asked.name), str::to_string);
    // The manifest rules first (name and description lengths), before anything is created.
    crate::teams_package::build(&crate::teams_package::BotApp {
        app_id: "00000000-0000-0000-0000-000000000000".into(),
        name: asked.name.to_string(),
        description: description.clone(),
        description_full: None,
        developer_name: "tenantd".into(),
        developer_url: "https://teams.microsoft.com".into(),
        accent_color: "#4464ee".into(),
        scopes: vec!["personal".into()],
    })
    .map_err(|err| CliError::usage(format!("--name/--description: {err}")))?;
    // A given package: readable and valid once its ids are the bot's (checked with a stand-in
    // id now; the real one exists after step 3).
    let package = match asked.package {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|err| {
                CliError::usage(format!("--package {}: {}", path.display(), err.kind()))
            })?;
            crate::teams_package::rebind(&bytes, "00000000-0000-0000-0000-000000000000")
                .map_err(|err| CliError::usage(format!("--package {}: {err}", path.display())))?;
            Some(bytes)
        }
        None => None,
    };
    let (store, keys) = open(config, Access::Write).await?;
    let connection = connections::get(&store, asked.connection)
        .await
        .map_err(|err| CliError::usage(format!("{err} ({})", err.reason_code())))?;
    if connection.auth_mode != AuthMode::Delegated {
        return Err(CliError::usage(format!(
            "connection {} is app-only; a bot is provisioned for a signed-in user: use a delegated connection (`tenantd tenant connect`)",
            connection.id
        )));
    }
    let bot = crate::bots::create_or_resume(
        &store,
        &crate::bots::NewBot {
            tenant_id: &connection.tenant_id,
            connection_id: &connection.id,
            user_name: connection.user_name.as_deref(),
            name: asked.name,
            endpoint: asked.endpoint,
            description: &description,
            single_tenant: asked.single_tenant,
            package: package.as_deref(),
            secret_name: asked.secret_name,
            secret_days: asked.secret_days,
        },
    )
    .await
    .map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    if bot.state != "ready" {
        let job = crate::jobs::bot_provision::BotProvision {
            bot_id: bot.id.clone(),
            tenant_id: bot.tenant_id.clone(),
            run_id: None,
        };
        eprintln!(
            "tenantd: provisioning bot {}; the daemon's workers run it",
            bot.id
        );
        let finished = run_and_wait(&store, &job, &bot.tenant_id, asked.wait).await?;
        if finished.state != "succeeded" {
            return Err(CliError::failure(format!(
                "provisioning stopped: {} ({}); fix it, then run the same command again to resume (`tenantd bot show {}`)",
                finished.message.as_deref().unwrap_or("-"),
                finished.reason.as_deref().unwrap_or("failed"),
                bot.id
            )));
        }
    }
    let bot = crate::bots::get(&store, &bot.id)
        .await
        .map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    let secret = crate::bots::take_secret(&store, &keys, &bot.id)
        .await
        .map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    print_result(
        &bot,
        secret.as_ref().map(|s| s.expose().as_str()),
        asked.output,
    );
    Ok(())
}

/// Starts an operation run of `job` for `tenant` (or joins the active one of its kind) and
/// waits for it to finish, up to `wait`.
async fn run_and_wait<J: crate::jobs::Job>(
    store: &crate::store::Store,
    job: &J,
    tenant: &str,
    wait: Duration,
) -> CliResult<crate::runs::OperationRun> {
    let new = crate::queue::NewJob {
        tenant_id: tenant.to_string(),
        dedupe_key: None,
        priority: 10,
        ..crate::jobs::new_job(job)
    };
    let queue = crate::queue::Queue::new(store.clone());
    let run = match crate::runs::start(store, &queue, J::KIND, tenant, new)
        .await
        .map_err(CliError::failure)?
    {
        crate::runs::Started::New(run) | crate::runs::Started::Existing(run) => run,
        crate::runs::Started::ScopeBusy(run) => {
            return Err(CliError::usage(format!(
                "scope busy: run {} ({}) is active for tenant {}; wait for it to finish, then run this again",
                run.id, run.kind, run.tenant_id
            )))
        }
    };
    wait_for_run(store, &run.id, wait).await
}

/// Waits for a run to finish, up to `wait`.
async fn wait_for_run(
    store: &crate::store::Store,
    run_id: &str,
    wait: Duration,
) -> CliResult<crate::runs::OperationRun> {
    let started = tokio::time::Instant::now();
    let mut hinted = false;
    loop {
        let run = crate::runs::get(store, run_id)
            .await
            .map_err(CliError::failure)?
            .ok_or_else(|| CliError::failure(format!("run {run_id} disappeared")))?;
        if matches!(run.state.as_str(), "succeeded" | "failed") {
            return Ok(run);
        }
        if run.state == "queued" && !hinted && started.elapsed() > QUEUED_HINT_AFTER {
            eprintln!("tenantd: run {run_id} is still queued: is the daemon running (`tenantd run`, or `tenantd demo`)?");
            hinted = true;
        }
        if started.elapsed() > wait {
            return Err(CliError::failure(format!(
                "run {run_id} is still {} after {}s; it goes on in the daemon: run the same command again later to see the result",
                run.state,
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_result(bot: &crate::bots::Bot, secret: Option<&str>, output: Output) {
    let password_note = "(shown once: store it now; tenantd keeps no copy)";
    let app_id = bot.app_id.as_deref().unwrap_or("-");
    let teams_app_id = bot.teams_app_id.as_deref().unwrap_or("-");
    let link = bot.install_link().unwrap_or_default();
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "bot_id": bot.id,
                "BOT_ID": app_id,
                "BOT_PASSWORD": secret,
                "TEAMS_APP_ID": teams_app_id,
                "TENANT_ID": bot.tenant_id,
                "install_link": link,
            })
        ),
        Output::Env => {
            println!("BOT_ID={app_id}");
            match secret {
                Some(secret) => println!("BOT_PASSWORD={secret}"),
                None => println!(
                    "# BOT_PASSWORD was shown when the bot was provisioned; tenantd keeps no copy"
                ),
            }
            println!("TEAMS_APP_ID={teams_app_id}");
            println!("TENANT_ID={}", bot.tenant_id);
        }
        Output::Text => {
            println!("bot {} ({}) is ready", bot.id, bot.name);
            println!("BOT_ID={app_id}");
            match secret {
                Some(secret) => println!("BOT_PASSWORD={secret}   {password_note}"),
                None => println!(
                    "BOT_PASSWORD was shown when the bot was provisioned; tenantd keeps no copy"
                ),
            }
            println!("TEAMS_APP_ID={teams_app_id}");
            println!("TENANT_ID={}", bot.tenant_id);
            println!("install: {link}");
        }
    }
}

async fn list(config: &Config, json: bool) -> CliResult {
    let store = super::open_store(config, Access::Read).await?;
    let bots = crate::bots::list(&store)
        .await
        .map_err(|err| CliError::failure(format!("{err} ({})", err.reason_code())))?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&bots).map_err(CliError::failure)?
        );
        return Ok(());
    }
    if bots.is_empty() {
        println!("no bots; provision one with `tenantd bot provision`");
        return Ok(());
    }
    println!(
        "{:<32} {:<30} {:<12} {:<16} {:<36} TENANT",
        "ID", "NAME", "STATE", "STEP", "BOT ID"
    );
    for bot in &bots {
        println!(
            "{:<32} {:<30} {:<12} {:<16} {:<36} {}",
            bot.id,
            bot.name,
            bot.state,
            bot.step.as_deref().unwrap_or("-"),
            bot.app_id.as_deref().unwrap_or("-"),
            bot.tenant_id
        );
    }
    Ok(())
}

async fn show(config: &Config, id: &str) -> CliResult {
    let store = super::open_store(config, Access::Read).await?;
    let bot = crate::bots::get(&store, id)
        .await
        .map_err(|err| CliError::usage(format!("{err} ({})", err.reason_code())))?;
    println!("bot {} ({})", bot.id, bot.name);
    println!(
        "  state: {}{}",
        bot.state,
        bot.reason
            .as_deref()
            .map(|r| format!(" ({r}: {})", bot.message.as_deref().unwrap_or("-")))
            .unwrap_or_default()
    );
    println!("  last step: {}", bot.step.as_deref().unwrap_or("none yet"));
    println!(
        "  tenant: {}  connection: {}  user: {}",
        bot.tenant_id,
        bot.connection_id,
        bot.user_name.as_deref().unwrap_or("-")
    );
    println!(
        "  endpoint: {}{}",
        bot.endpoint,
        if bot.single_tenant {
            " (single-tenant)"
        } else {
            ""
        }
    );
    println!(
        "  app registration: {}  BOT_ID: {}",
        bot.application_id.as_deref().unwrap_or("-"),
        bot.app_id.as_deref().unwrap_or("-")
    );
    println!(
        "  client secret: {}",
        match (&bot.secret_key_id, bot.secret_held) {
            (None, _) => "none yet",
            (Some(_), true) => "added; shown once by the next `tenantd bot provision` of this bot",
            (Some(_), false) => "added and shown; tenantd keeps no copy",
        }
    );
    println!(
        "  TEAMS_APP_ID: {}",
        bot.teams_app_id.as_deref().unwrap_or("-")
    );
    println!(
        "  bot registration: {}",
        if bot.bot_registered {
            "done"
        } else {
            "not yet"
        }
    );
    if let Some(link) = bot.install_link() {
        println!("  install: {link}");
    }
    Ok(())
}

async fn delete(config: &Config, id: &str, wait: Duration) -> CliResult {
    let store = super::open_store(config, Access::Write).await?;
    let bot = crate::bots::get(&store, id)
        .await
        .map_err(|err| CliError::usage(format!("{err} ({})", err.reason_code())))?;
    if bot.state == "deleted" {
        println!("bot {} ({}) is deleted already", bot.id, bot.name);
        return Ok(());
    }
    let job = crate::jobs::bot_delete::BotDelete {
        bot_id: bot.id.clone(),
        tenant_id: bot.tenant_id.clone(),
        run_id: None,
    };
    eprintln!(
        "tenantd: deleting bot {}; the daemon's workers run it",
        bot.id
    );
    let finished = run_and_wait(&store, &job, &bot.tenant_id, wait).await?;
    if finished.state != "succeeded" {
        return Err(CliError::failure(format!(
            "deleting stopped: {} ({}); fix it, then run the same command again to resume",
            finished.message.as_deref().unwrap_or("-"),
            finished.reason.as_deref().unwrap_or("failed"),
        )));
    }
    println!(
        "bot {} ({}) deleted: its bot registration, Teams app and app registration",
        bot.id, bot.name
    );
    Ok(())
}
