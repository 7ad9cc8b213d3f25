//! `tenantd heartbeat ...`: start a tenant's heartbeat run now, list what heartbeat runs
//! created, and remove it again (cleanup, with a dry run).

use clap::Subcommand;

use super::runs::start_and_report;
use super::{exit_code, CliError, CliResult};
use crate::config::Config;
use crate::heartbeat;
use crate::jobs::heartbeat_cleanup::HeartbeatCleanup;
use crate::jobs::heartbeat_run::HeartbeatRun;
use crate::jobs::Job;
use crate::queue::NewJob;
use crate::vault::connections::canonical_tenant;

/// `tenantd heartbeat ...`
#[derive(Debug, Subcommand)]
pub(crate) enum HeartbeatCommand {
    /// Run the tenant's [[heartbeat]] scenario now, as an operation run
    RunNow {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
    },
    /// What heartbeat runs created in a tenant
    List {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Include objects cleanup already removed
        #[arg(long)]
        all: bool,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove everything heartbeat runs created in a tenant, and nothing else (operation run)
    Cleanup {
        /// Entra tenant ID (GUID)
        #[arg(long, value_name = "GUID")]
        tenant: String,
        /// Only list what would be removed
        #[arg(long)]
        dry_run: bool,
    },
}

/// An operator's job: ahead of scheduled work, no dedupe key (the operation run dedupes).
fn job_of<J: Job>(job: &J, tenant: &str) -> NewJob {
    NewJob {
        tenant_id: tenant.into(),
        dedupe_key: None,
        priority: 10,
        ..crate::jobs::new_job(job)
    }
}

fn print_objects(objects: &[heartbeat::ProvisionedObject]) {
    println!(
        "{:<8} {:<44} {:<36} {:<32} ATTRIBUTED TO",
        "KIND", "GRAPH ID", "OWNER", "RUN"
    );
    for object in objects {
        println!(
            "{:<8} {:<44} {:<36} {:<32} {}{}",
            object.kind,
            object.graph_id,
            if object.owner.is_empty() {
                "-"
            } else {
                &object.owner
            },
            &object.run_id,
            object.attributed_to.as_deref().unwrap_or("-"),
            if object.removed_at.is_some() {
                " (removed)"
            } else {
                ""
            },
        );
    }
}

/// Runs one `heartbeat` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &HeartbeatCommand) -> i32 {
    let tenant = match command {
        HeartbeatCommand::RunNow { tenant }
        | HeartbeatCommand::List { tenant, .. }
        | HeartbeatCommand::Cleanup { tenant, .. } => tenant,
    };
    let tenant = match canonical_tenant(tenant) {
        Ok(tenant) => tenant,
        Err(err) => return exit_code(Err(CliError::usage(err))),
    };
    let access = match command {
        HeartbeatCommand::List { .. } | HeartbeatCommand::Cleanup { dry_run: true, .. } => {
            super::Access::Read
        }
        HeartbeatCommand::RunNow { .. } | HeartbeatCommand::Cleanup { .. } => super::Access::Write,
    };
    let store = match super::open_store(config, access).await {
        Ok(store) => store,
        Err(err) => return exit_code(Err(err)),
    };
    let result = match command {
        HeartbeatCommand::RunNow { .. } => run_now(config, &store, &tenant).await,
        HeartbeatCommand::List { all, json, .. } => list(&store, &tenant, *all, *json).await,
        HeartbeatCommand::Cleanup { dry_run: true, .. } => {
            let objects = heartbeat::list(&store, &tenant, false)
                .await
                .map_err(CliError::failure);
            objects.map(|objects| {
                print_objects(&objects);
                println!(
                    "would remove {} object(s); nothing was changed",
                    objects.len()
                );
            })
        }
        HeartbeatCommand::Cleanup { .. } => {
            let job = HeartbeatCleanup {
                tenant_id: tenant.clone(),
                run_id: None,
            };
            start_and_report(
                &store,
                HeartbeatCleanup::KIND,
                &tenant,
                job_of(&job, &tenant),
            )
            .await
        }
    };
    store.close().await;
    exit_code(result)
}

/// `heartbeat run-now`: the tenant's configured scenario as an operation run.
async fn run_now(config: &Config, store: &crate::store::Store, tenant: &str) -> CliResult {
    let Some(scenario) = config
        .heartbeat
        .iter()
        .find(|s| s.tenant.trim().eq_ignore_ascii_case(tenant))
    else {
        return Err(CliError::usage(format!("no [[heartbeat]] scenario for tenant {tenant}; fix: add one to the configuration (see config/tenantd.example.toml)")));
    };
    let job = HeartbeatRun::new(scenario);
    start_and_report(store, HeartbeatRun::KIND, tenant, job_of(&job, tenant)).await
}

/// `heartbeat list`: what heartbeat runs provisioned in the tenant.
async fn list(store: &crate::store::Store, tenant: &str, all: bool, json: bool) -> CliResult {
    let objects = heartbeat::list(store, tenant, all)
        .await
        .map_err(CliError::failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&objects).expect("objects serialize")
        );
    } else if objects.is_empty() {
        println!(
            "no heartbeat objects for tenant {tenant}{}",
            if all {
                ""
            } else {
                " (--all includes removed ones)"
            }
        );
    } else {
        print_objects(&objects);
    }
    Ok(())
}
