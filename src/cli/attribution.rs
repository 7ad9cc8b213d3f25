//! `tenantd enqueue` (hand tenantd a job of any registered kind, such as a delegated action)
//! and `tenantd attribution ...` (what tenantd sent as users and the replies linked to it; a
//! tenant's lookback window).

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
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
    let payload: serde_json::Value = match serde_json::from_str(payload) {
        Ok(payload) => payload,
        Err(err) => {
            eprintln!("tenantd: --payload is not JSON ({err}); fix: pass one JSON object, e.g. '{{\"tenant_id\": \"...\"}}'");
            return EXIT_USAGE;
        }
    };
    let job = match Registry::standard().prepare(kind, payload) {
        Ok(job) => job,
        Err(problem) => {
            eprintln!("tenantd: {problem}");
            return EXIT_USAGE;
        }
    };
    let Some(store) = super::open_store(config).await else {
        return EXIT_FAILURE;
    };
    let code = match Queue::new(store.clone()).enqueue(&job).await {
        Ok(Enqueued::Created(id)) => {
            println!("queued job {id} ({kind})");
            EXIT_OK
        }
        Ok(Enqueued::Deduplicated(id)) => {
            println!("job {id} ({kind}) with the same key is queued already");
            EXIT_OK
        }
        Err(err) => {
            eprintln!("tenantd: {err}");
            EXIT_FAILURE
        }
    };
    store.close().await;
    code
}

/// Runs one `attribution` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &AttributionCommand) -> i32 {
    let (AttributionCommand::List { tenant, .. } | AttributionCommand::Lookback { tenant, .. }) =
        command;
    let tenant = match canonical_tenant(tenant) {
        Ok(tenant) => tenant,
        Err(err) => {
            eprintln!("tenantd: {err}");
            return EXIT_USAGE;
        }
    };
    let Some(store) = super::open_store(config).await else {
        return EXIT_FAILURE;
    };
    let code = match command {
        AttributionCommand::List { json, .. } => match attribution::list(&store, &tenant).await {
            Ok(list) if *json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("serializes")
                );
                EXIT_OK
            }
            Ok(list) => {
                for entry in list {
                    let a = &entry.action;
                    println!(
                        "{} {:<5} {:<8} user {} {}",
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
                EXIT_OK
            }
            Err(err) => {
                eprintln!("tenantd: {err}");
                EXIT_FAILURE
            }
        },
        AttributionCommand::Lookback { days, .. } => {
            match attribution::set_lookback(&store, &tenant, *days).await {
                Ok(()) => {
                    println!("tenant {tenant}: replies are linked back {days} days");
                    EXIT_OK
                }
                Err(err @ attribution::AttributionError::InvalidLookback(_)) => {
                    eprintln!("tenantd: {err}");
                    EXIT_USAGE
                }
                Err(err) => {
                    eprintln!("tenantd: {err}");
                    EXIT_FAILURE
                }
            }
        }
    };
    store.close().await;
    code
}
