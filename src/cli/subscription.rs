//! `tenantd subscription ...`: want, list and stop wanting Graph change-notification
//! subscriptions. The daemon's reconcile job does the Graph side (create, renew, delete) within
//! a minute; these commands only record what is wanted.

use clap::Subcommand;

use super::{exit_code, CliError, CliResult};
use crate::config::Config;
use crate::subscriptions::{self, Desired, Origin, SubscriptionError};

/// `tenantd subscription ...`
#[derive(Debug, Subcommand)]
pub(crate) enum SubscriptionCommand {
    /// Want a subscription (created at Graph by the daemon within a minute)
    Create {
        /// Entra tenant ID (GUID) of a connected tenant
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Graph resource path, e.g. users/{id}/messages
        #[arg(long, value_name = "PATH")]
        resource: String,
        /// Change types, comma-separated: created, updated, deleted
        #[arg(long, value_name = "TYPES", default_value = "created,updated,deleted")]
        change_types: String,
        /// Rich notifications: Graph sends the resource, encrypted for a certificate tenantd
        /// makes (Outlook resources need `?$select=...`)
        #[arg(long)]
        include_resource_data: bool,
    },
    /// Subscriptions with their Graph id, status and expiry
    List {
        /// Only this tenant's
        #[arg(long, value_name = "GUID")]
        tenant: Option<String>,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Stop wanting a subscription (deleted at Graph by the daemon within a minute)
    Delete {
        /// tenantd's subscription id (from `subscription list`)
        id: String,
    },
}

/// A subscription error as the CLI reports it: a bad or unknown subscription is a usage error.
fn failed(err: SubscriptionError) -> CliError {
    match err {
        SubscriptionError::Invalid(_) | SubscriptionError::NotFound(_) => CliError::usage(err),
        _ => CliError::failure(err),
    }
}

/// Runs one `subscription` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &SubscriptionCommand) -> i32 {
    let access = match command {
        SubscriptionCommand::List { .. } => super::Access::Read,
        _ => super::Access::Write,
    };
    let (store, keys) = match super::tenant::open(config, access).await {
        Ok(opened) => opened,
        Err(err) => return exit_code(Err(err)),
    };
    let result = match command {
        SubscriptionCommand::Create {
            tenant,
            resource,
            change_types,
            include_resource_data,
        } => {
            let types: Vec<String> = change_types.split(',').map(str::to_string).collect();
            let desired = Desired {
                tenant_id: tenant,
                resource,
                change_types: &types,
                origin: Origin::Cli,
                include_resource_data: *include_resource_data,
            };
            subscriptions::declare(&store, &keys, &desired)
                .await
                .map_err(failed)
                .map(|row| {
                    println!(
                        "subscription {} wanted: {} {} ({}); the daemon creates it at Graph",
                        row.id, row.tenant_id, row.resource, row.change_types
                    );
                    if config.listener.public_url.is_none() {
                        eprintln!("tenantd: warning: listener.public_url is not set; Graph needs it to post notifications");
                    }
                })
        }
        SubscriptionCommand::List { tenant, json } => list(&store, tenant.as_deref(), *json).await,
        SubscriptionCommand::Delete { id } => subscriptions::unwant(&store, id)
            .await
            .map_err(failed)
            .map(|()| {
                println!("subscription {id} no longer wanted; the daemon deletes it at Graph");
            }),
    };
    store.close().await;
    exit_code(result)
}

/// `subscription list`: the wanted and unwanted subscriptions, their Graph ids and reasons.
async fn list(store: &crate::store::Store, tenant: Option<&str>, json: bool) -> CliResult {
    let list = subscriptions::list(store, tenant).await.map_err(failed)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("subscriptions serialize")
        );
    } else if list.is_empty() {
        println!("no subscriptions; want one with `tenantd subscription create` or [[subscriptions]] in the configuration");
    } else {
        println!(
            "{:<32}  {:<36} {:<8} {:<8} {:<36} {:<12} {:<24} RESOURCE",
            "ID", "TENANT", "STATUS", "WANTED", "GRAPH ID", "EXPIRES", "REASON"
        );
        for row in list {
            println!(
                "{:<32}  {:<36} {:<8} {:<8} {:<36} {:<12} {:<24} {}",
                row.id,
                row.tenant_id,
                row.status,
                if row.wanted { "wanted" } else { "unwanted" },
                row.graph_id.as_deref().unwrap_or("-"),
                super::tenant::when(row.expires_at),
                row.reason.as_deref().unwrap_or("-"),
                row.resource,
            );
        }
    }
    Ok(())
}
