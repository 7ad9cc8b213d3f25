//! `tenantd enqueue` (hand tenantd a job of any registered kind, such as a delegated action)
//! and `tenantd attribution ...` (what tenantd sent as users and the replies linked to it; a
//! tenant's lookback window).

use clap::Subcommand;

use super::{exit_code, CliError, CliResult};
use crate::attribution;
use crate::config::Config;
use crate::jobs::Registry;
use crate::queue::{Enqueued, Queue};
use crate::vault::connections::canonical_tenant;

/// `tenantd attribution ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AttributionCommand {
    /// Mail and events tenantd sent or created as a user, with the replies linked to them
    List {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Set how long replies are linked back (30, 60 or 90 days; 90 unless set)
    Lookback {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// 30, 60 or 90
        #[arg(long, value_name = "DAYS")]
        days: i64,
    },
}

/// `tenantd enqueue KIND --payload JSON`.
pub(crate) async fn enqueue(config: &Config, kind: &str, payload: &str) -> i32 {
    let job = match prepare(kind, payload) {
        Ok(job) => job,
        Err(err) => return exit_code(Err(err)),
    };
    let store = match super::open_store(config, super::Access::Write).await {
        Ok(store) => store,
        Err(err) => return exit_code(Err(err)),
    };
    let result = match Queue::new(store.clone()).enqueue(&job).await {
        Ok(Enqueued::Created(id)) => {
            println!("queued job {id} ({kind})");
            Ok(())
        }
        Ok(Enqueued::Deduplicated(id)) => {
            println!("job {id} ({kind}) with the same key is queued already");
            Ok(())
        }
        Err(err) => Err(CliError::failure(err)),
    };
    store.close().await;
    exit_code(result)
}

/// The job `tenantd enqueue` was given, checked against its kind before anything opens.
fn prepare(kind: &str, payload: &str) -> CliResult<crate::queue::NewJob> {
    let payload: serde_json::Value = serde_json::from_str(payload).map_err(|err| {
        CliError::usage(format!("--payload is not JSON ({err}); fix: pass one JSON object, e.g. '{{\"tenant_id\": \"...\"}}'"))
    })?;
    Registry::standard()
        .prepare(kind, payload)
        .map_err(CliError::usage)
}

/// Runs one `attribution` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &AttributionCommand) -> i32 {
    let (AttributionCommand::List { tenant, .. } | AttributionCommand::Lookback { tenant, .. }) =
        command;
    let tenant = match canonical_tenant(tenant) {
        Ok(tenant) => tenant,
        Err(err) => return exit_code(Err(CliError::usage(err))),
    };
    let access = match command {
        AttributionCommand::List { .. } => super::Access::Read,
        AttributionCommand::Lookback { .. } => super::Access::Write,
    };
    let store = match super::open_store(config, access).await {
        Ok(store) => store,
        Err(err) => return exit_code(Err(err)),
    };
    let result = match command {
        AttributionCommand::List { json, .. } => list(&store, &tenant, *json).await,
        AttributionCommand::Lookback { days, .. } => {
            match attribution::set_lookback(&store, &tenant, *days).await {
                Ok(()) => {
                    println!("tenant {tenant}: replies are linked back {days} days");
                    Ok(())
                }
                Err(err @ attribution::AttributionError::InvalidLookback(_)) => {
                    Err(CliError::usage(err))
                }
                Err(err) => Err(CliError::failure(err)),
            }
        }
    };
    store.close().await;
    exit_code(result)
}

/// `attribution list`: what tenantd sent as users, each with the replies linked to it.
async fn list(store: &crate::store::Store, tenant: &str, json: bool) -> CliResult {
    let list = attribution::list(store, tenant)
        .await
        .map_err(CliError::failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("serializes")
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("no actions taken as users for tenant {tenant}");
        return Ok(());
    }
    println!(
        "{:<32} {:<5} {:<8} {:<41} SUBJECT",
        "ACTION", "KIND", "STATE", "USER"
    );
    for entry in list {
        let a = &entry.action;
        println!(
            "{} {:<5} {:<8} user {:<36} {}",
            a.id,
            a.kind,
            a.state,
            a.user_id,
            a.subject.as_deref().unwrap_or("-")
        );
        for reply in entry.replies {
            println!(
                "    reply {} from {} ({}, {})",
                reply.message_id,
                reply.from_address.as_deref().unwrap_or("-"),
                reply.matched_by,
                reply.received_at.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}
