//! `tenantd bot ...`: Teams bot provisioning (seed 004, issue #20). So far the first checks of
//! the flow: whether the signed-in user's tenant lets them upload custom apps
//! (`check-sideloading`), which decides whether a provisioned bot can be installed at all.

use std::sync::Arc;

use clap::Subcommand;

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
