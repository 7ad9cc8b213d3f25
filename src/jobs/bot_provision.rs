//! `bot_provision`: provisions a Teams bot for the signed-in user of a delegated connection
//! (seed 004, issue #20), as an operation run of recorded steps:
//! 1. scopes: tokens for Graph and for the Developer Portal, each from the stored refresh
//!    token for its own resource (missing consent stops here);
//! 2. sideloading: the user's `mtUserAppPolicy` (custom app upload off stops here);
//! 3. app registration, upserted by `uniqueName` (never created twice);
//! 4. a client secret (`addPassword`), sealed at once; credentials a crashed attempt added
//!    without recording are removed first;
//! 5. the Teams app package, built and imported (replacing the same app id on a resume);
//! 6. the bot registration (`409` updates the existing one).
//!
//! Owns no tables (it writes `bots` through `crate::bots`). Invariants: each step's result is
//! recorded before the next starts and a resumed run skips recorded steps; failures that need a
//! human end the run with their reason (`consent_required`, `sideloading_disabled`, …) and
//! leave the bot `failed` for a later resume; transient ones are retried by the queue.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Job, JobContext, JobError};
use crate::bots::{self, Bot};
use crate::graph::GraphError;
use crate::metrics::names;
use crate::runs;
use crate::secret::Secret;
use crate::teams_package::{self, BotApp};
use crate::vault::connections::{self, Connection};
use crate::vault::identity::{token_claims, DEV_PORTAL_RESOURCE};
use crate::vault::tokens::TokenServiceError;

/// Provision one bot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotProvision {
    /// The bot (`bots.id`).
    pub bot_id: String,
    /// The bot's tenant (the run's scope).
    pub tenant_id: String,
    /// The operation run this job reports to.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// A failure that ends the run: a human has to act before a resume can pass.
struct Stop {
    reason: &'static str,
    message: String,
}

impl Job for BotProvision {
    const KIND: &'static str = "bot_provision";
    const MAX_ATTEMPTS: u32 = 8;

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        let run_id = self.run_id.clone().unwrap_or_default();
        runs::mark_running(&context.store, &run_id)
            .await
            .map_err(JobError::database)?;
        let bot = bots::get(&context.store, &self.bot_id)
            .await
            .map_err(JobError::database)?;
        let mut step = "scopes";
        let outcome = match connections::get(&context.store, &bot.connection_id).await {
            Ok(connection) => provision(&context, &connection, bot, &mut step).await,
            Err(err) => Err(Err(Stop {
                reason: err.reason_code(),
                message: format!(
                    "the bot's connection {} is gone; provision it again with another connection",
                    bot.connection_id
                ),
            })),
        };
        let result = match &outcome {
            Ok(()) => "succeeded",
            Err(Ok(_)) => "retried",
            Err(Err(_)) => "failed",
        };
        metrics::counter!(names::BOT_PROVISIONING_RUNS, "result" => result, "step" => step)
            .increment(1);
        let (ok, reason, message) = match outcome {
            Ok(()) => (
                true,
                "ok",
                "the bot is registered and its Teams app imported".to_string(),
            ),
            // Transient: the queue tries again (the run stays running).
            Err(Ok(retry)) => return Err(retry),
            Err(Err(stop)) => {
                bots::record_failed(&context.store, &self.bot_id, stop.reason, &stop.message)
                    .await
                    .map_err(JobError::database)?;
                (false, stop.reason, stop.message)
            }
        };
        runs::finish(&context.store, &run_id, ok, reason, &message)
            .await
            .map_err(JobError::database)
    }
}

/// What a step's failure means: retry (`Ok`) or stop the run (`Err`).
type StepError = Result<JobError, Stop>;

fn classify(err: GraphError) -> StepError {
    let consent =
        matches!(&err, GraphError::Token(TokenServiceError::Token(token)) if token.is_consent());
    match JobError::from(err) {
        retry @ JobError::Retry { .. } => Ok(retry),
        JobError::Permanent { reason, message } => Err(Stop {
            reason: if consent { "consent_required" } else { reason },
            message,
        }),
    }
}

fn database(err: impl std::fmt::Display) -> StepError {
    Ok(JobError::database(err))
}

/// Runs the steps not yet recorded; `step` names the one under way (for the metrics).
async fn provision(
    context: &JobContext,
    connection: &Connection,
    bot: Bot,
    step: &mut &'static str,
) -> Result<(), StepError> {
    let store = &context.store;
    // 1. Scopes: one token per resource, from the refresh token of one sign-in; each must
    // carry the permission its steps need (a token can come without it when only other
    // permissions of that resource were consented).
    for (resource, scope, what) in [
        (
            context.tokens.graph_resource(),
            "Application.ReadWrite.All",
            "Microsoft Graph's Application.ReadWrite.All",
        ),
        (
            DEV_PORTAL_RESOURCE,
            "AppDefinitions.ReadWrite",
            "the Teams Developer Portal's AppDefinitions.ReadWrite",
        ),
    ] {
        let missing = || {
            Stop {
            reason: "consent_required",
            message: format!(
                "{what} is not consented for this user; an admin grants it (`tenantd tenant consent-url --tenant {}`), then run `tenantd bot provision` again",
                bot.tenant_id
            ),
        }
        };
        let token = match context.tokens.access_token(connection, resource).await {
            Ok(token) => token,
            Err(err) => {
                return Err(match classify(GraphError::Token(err)) {
                    Err(stop) if stop.reason == "consent_required" => Err(missing()),
                    other => other,
                })
            }
        };
        let granted = token_claims(token.expose())
            .and_then(|claims| {
                claims
                    .get("scp")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        if !granted
            .split(' ')
            .any(|granted| granted.eq_ignore_ascii_case(scope))
        {
            return Err(Err(missing()));
        }
    }
    // 2. Sideloading.
    *step = "sideloading";
    if !context
        .graph
        .sideloading_allowed(connection)
        .await
        .map_err(classify)?
    {
        return Err(Err(Stop {
            reason: "sideloading_disabled",
            message: "custom app upload is off for this user; a Teams administrator turns on \"Upload custom apps\" in the user's app setup policy (`tenantd bot check-sideloading` prints the steps)".into(),
        }));
    }
    // 3. App registration, upserted by its unique name.
    *step = "app_registration";
    let (application_id, app_id) = match (&bot.application_id, &bot.app_id) {
        (Some(application_id), Some(app_id)) => (application_id.clone(), app_id.clone()),
        _ => {
            let audience = if bot.single_tenant {
                "AzureADMyOrg"
            } else {
                "AzureADMultipleOrgs"
            };
            let application = context
                .graph
                .upsert_application(
                    connection,
                    &bot.unique_name(),
                    &json!({ "displayName": bot.name, "signInAudience": audience }),
                )
                .await
                .map_err(classify)?;
            let (Some(application_id), Some(app_id)) =
                (application["id"].as_str(), application["appId"].as_str())
            else {
                return Err(Err(Stop {
                    reason: "unrecognised_application",
                    message: "Graph's application has no id or appId".into(),
                }));
            };
            bots::record_application(store, &bot.id, application_id, app_id)
                .await
                .map_err(database)?;
            (application_id.to_string(), app_id.to_string())
        }
    };
    *step = "secret";
    // 4. The client secret: any of ours not recorded (an attempt that stopped between Graph's
    // answer and the record) is removed first, so exactly one stays.
    if bot.secret_key_id.is_none() {
        let application = context
            .graph
            .application(connection, &application_id)
            .await
            .map_err(classify)?;
        for credential in application["passwordCredentials"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if credential["displayName"] == bot.secret_name.as_str() {
                if let Some(key_id) = credential["keyId"].as_str() {
                    context
                        .graph
                        .remove_password(connection, &application_id, key_id)
                        .await
                        .map_err(classify)?;
                }
            }
        }
        let password = context
            .graph
            .add_password(
                connection,
                &application_id,
                &bot.secret_name,
                Some(&secret_end(bot.secret_days)),
            )
            .await
            .map_err(classify)?;
        let (Some(key_id), Some(secret)) =
            (password["keyId"].as_str(), password["secretText"].as_str())
        else {
            return Err(Err(Stop {
                reason: "unrecognised_password",
                message: "Graph's passwordCredential has no keyId or secretText".into(),
            }));
        };
        let secret = Secret::new(secret.to_string());
        bots::record_secret(store, &context.keys, &bot.id, key_id, &secret)
            .await
            .map_err(database)?;
    }
    // 5. The Teams app package.
    *step = "package";
    if bot.teams_app_id.is_none() {
        let given = bots::package(store, &bot.id).await.map_err(database)?;
        let package = match given {
            // The operator's own package, its ids set to this bot's.
            Some(given) => teams_package::rebind(&given, &app_id),
            None => teams_package::build(&BotApp {
                app_id: app_id.clone(),
                name: bot.name.clone(),
                description: bot.description.clone(),
                description_full: None,
                developer_name: "tenantd".into(),
                developer_url: origin_of(&bot.endpoint),
                accent_color: "#4464ee".into(),
                scopes: vec!["personal".into(), "team".into(), "groupChat".into()],
            }),
        }
        .map_err(|err| {
            Err(Stop {
                reason: err.reason_code(),
                message: err.to_string(),
            })
        })?;
        let imported = context
            .graph
            .import_app_package(connection, package, true)
            .await
            .map_err(classify)?;
        let Some(teams_app_id) = imported["teamsAppId"].as_str() else {
            return Err(Err(Stop {
                reason: "unrecognised_app_definition",
                message: "the Developer Portal's answer has no teamsAppId".into(),
            }));
        };
        bots::record_teams_app(store, &bot.id, teams_app_id)
            .await
            .map_err(database)?;
    }
    *step = "bot_registration";
    // 6. The bot registration; an existing one (ours, from an attempt that stopped before
    // recording it) is updated.
    if !bot.bot_registered {
        let registration = json!({
            "botId": app_id,
            "name": bot.name,
            "description": bot.description,
            "messagingEndpoint": bot.endpoint,
            "callingEndpoint": "",
            "configuredChannels": ["msteams"],
            "isSingleTenant": bot.single_tenant,
        });
        match context.graph.register_bot(connection, &registration).await {
            Ok(_) => {}
            Err(GraphError::Conflict { .. }) => {
                context
                    .graph
                    .update_bot(connection, &app_id, &registration)
                    .await
                    .map_err(classify)?;
            }
            Err(err) => return Err(classify(err)),
        }
    }
    bots::record_ready(store, &bot.id).await.map_err(database)?;
    Ok(())
}

/// The end of a secret that lives `days` days from now, as Graph takes it (RFC 3339).
fn secret_end(days: i64) -> String {
    super::subscription_steps::rfc3339(crate::clock::now_unix() + days.max(1) * 86_400)
}

/// `https://host` of an endpoint URL, for the manifest's developer pages.
fn origin_of(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .map(|url| url.origin().ascii_serialization())
        .filter(|origin| origin.starts_with("https://"))
        .unwrap_or_else(|| "https://teams.microsoft.com".into())
}
