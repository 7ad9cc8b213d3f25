//! `tenantd subscription ...`: want, list and stop wanting Graph change-notification
//! subscriptions. The daemon's reconcile job does the Graph side (create, renew, delete) within
//! a minute; these commands only record what is wanted.

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
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

fn failed(err: &SubscriptionError) -> i32 {
    eprintln!("tenantd: {err}");
    match err {
        SubscriptionError::Invalid(_) | SubscriptionError::NotFound(_) => EXIT_USAGE,
        _ => EXIT_FAILURE,
    }
}

/// Runs one `subscription` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &SubscriptionCommand) -> i32 {
    let (store, keys) = match super::tenant::open(config).await {
        Ok(opened) => opened,
        Err(message) => {
            eprintln!("tenantd: {message}");
            return EXIT_FAILURE;
        }
    };
    let code = match command {
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
            match subscriptions::declare(&store, &keys, &desired).await {
                Ok(row) => {
                    println!(
                        "subscription {} wanted: {} {} ({}); the daemon creates it at Graph",
                        row.id, row.tenant_id, row.resource, row.change_types
                    );
                    if config.listener.public_url.is_none() {
                        eprintln!("tenantd: warning: listener.public_url is not set; Graph needs it to post notifications");
                    }
                    EXIT_OK
                }
                Err(err) => failed(&err),
            }
        }
        SubscriptionCommand::List { tenant, json } => {
            match subscriptions::list(&store, tenant.as_deref()).await {
                Ok(list) if *json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&list).expect("subscriptions serialize")
                    );
                    EXIT_OK
                }
                Ok(list) => {
                    for row in list {
                        println!(
                            "{}  {:<36} {:<8} {:<6} {:<36} {:<12} {}  {}",
                            row.id,
                            row.tenant_id,
                            row.status,
                            if row.wanted { "wanted" } else { "unwanted" },
                            row.graph_id.as_deref().unwrap_or("-"),
                            row.expires_at.map_or("-".into(), |at| at.to_string()),
                            row.reason.as_deref().unwrap_or("-"),
                            row.resource,
                        );
                    }
                    EXIT_OK
                }
                Err(err) => failed(&err),
            }
        }
        SubscriptionCommand::Delete { id } => match subscriptions::unwant(&store, id).await {
            Ok(()) => {
                println!("subscription {id} no longer wanted; the daemon deletes it at Graph");
                EXIT_OK
            }
            Err(err) => failed(&err),
        },
    };
    store.close().await;
    code
}
