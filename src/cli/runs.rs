//! `tenantd runs ...`: start operator operations as operation runs and list them.

use clap::Subcommand;

use super::{exit_code, CliError, CliResult};
use crate::config::Config;
use crate::jobs::connection_check::ConnectionCheck;
use crate::jobs::Job;
use crate::queue::{NewJob, Queue};
use crate::runs::{self, Started};
use crate::vault::connections::canonical_tenant;

/// `tenantd runs ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// The most recent operation runs
    List {
        /// At most this many
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check a tenant's connections (a Graph token for each), as an operation run
    ConnectionCheck {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
    },
}

/// Runs one `runs` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &RunsCommand) -> i32 {
    let access = match command {
        RunsCommand::List { .. } => super::Access::Read,
        RunsCommand::ConnectionCheck { .. } => super::Access::Write,
    };
    let store = match super::open_store(config, access).await {
        Ok(store) => store,
        Err(err) => return exit_code(Err(err)),
    };
    let result = match command {
        RunsCommand::List { limit, json } => list(&store, *limit, *json).await,
        RunsCommand::ConnectionCheck { tenant } => connection_check(&store, tenant).await,
    };
    store.close().await;
    exit_code(result)
}

/// `runs list`: the latest operation runs.
async fn list(store: &crate::store::Store, limit: u32, json: bool) -> CliResult {
    let list = runs::list(store, limit).await.map_err(CliError::failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("runs serialize")
        );
    } else if list.is_empty() {
        println!("no operation runs");
    } else {
        println!(
            "{:<32}  {:<18} {:<36} {:<9} REASON",
            "ID", "KIND", "TENANT", "STATE"
        );
        for run in list {
            println!(
                "{}  {:<18} {:<36} {:<9} {}",
                run.id,
                run.kind,
                run.tenant_id,
                run.state,
                run.reason.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// `runs connection-check`: a connection check of the tenant as an operation run.
async fn connection_check(store: &crate::store::Store, tenant: &str) -> CliResult {
    let tenant = canonical_tenant(tenant).map_err(CliError::usage)?;
    let job = ConnectionCheck {
        tenant_id: tenant.clone(),
        run_id: None,
    };
    let new = NewJob {
        tenant_id: tenant.clone(),
        dedupe_key: None,
        priority: 10,
        ..crate::jobs::new_job(&job)
    };
    start_and_report(store, ConnectionCheck::KIND, &tenant, new).await
}

/// Starts an operation run of `kind` for `tenant` doing `job` and says what happened: started,
/// already active, or refused because another run holds the tenant (scope busy).
pub(crate) async fn start_and_report(
    store: &crate::store::Store,
    kind: &str,
    tenant: &str,
    job: NewJob,
) -> CliResult {
    match runs::start(store, &Queue::new(store.clone()), kind, tenant, job)
        .await
        .map_err(CliError::failure)?
    {
        Started::New(run) => {
            println!(
                "started run {} ({}); the daemon's workers run it",
                run.id, run.kind
            );
            Ok(())
        }
        Started::Existing(run) => {
            println!(
                "run {} ({}) is already active for this tenant",
                run.id, run.kind
            );
            Ok(())
        }
        Started::ScopeBusy(run) => Err(CliError::usage(format!(
            "scope busy: run {} ({}) is active for tenant {}; wait for it to finish",
            run.id, run.kind, run.tenant_id
        ))),
    }
}
