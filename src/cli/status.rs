//! `tenantd status [--watch] [--json]`: the one screen an operator reads at a glance, per
//! tenant: connections with status, reason and token expiry; subscriptions and the soonest
//! expiry, the ones not active with their reason; the last heartbeat run; its Teams bots with
//! their provisioning state, last step and reason; then the queue's
//! depth and age by kind, dead letters, and the latest failures. Reads the daemon's database
//! only (running or stopped); never writes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::tenant::when;
use super::{Access, CliError, CliResult};
use crate::config::Config;
use crate::queue::{JobInfo, KindDepth, Queue};
use crate::store::Store;
use crate::subscriptions::Subscription;
use crate::vault::connections::{self, Connection};

/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Everything the screen shows, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Status {
    tenants: Vec<TenantStatus>,
    queue: Vec<KindDepth>,
    recent_failures: Vec<JobInfo>,
}

#[derive(Debug, Serialize)]
struct TenantStatus {
    tenant_id: String,
    connections: Vec<Connection>,
    subscriptions: Vec<Subscription>,
    last_heartbeat: Option<JobInfo>,
    bots: Vec<crate::bots::Bot>,
}

/// Runs `tenantd status`.
pub(crate) async fn run(config: &Config, watch: bool, json: bool) -> CliResult {
    let store = super::open_store(config, Access::Read).await?;
    loop {
        let status = gather(&store).await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serializes")
            );
        } else {
            if watch {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&status));
        }
        if !watch {
            break;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    store.close().await;
    Ok(())
}

async fn gather(store: &Store) -> CliResult<Status> {
    let failed = |err: &dyn std::fmt::Display| CliError::failure(err.to_string());
    let connections = connections::list(store, None)
        .await
        .map_err(|e| failed(&e))?;
    let subscriptions = crate::subscriptions::list(store, None)
        .await
        .map_err(|e| failed(&e))?;
    let queue = Queue::new(store.clone());
    let heartbeats = queue
        .latest_per_tenant("heartbeat_run")
        .await
        .map_err(|e| failed(&e))?;
    let mut tenants: BTreeMap<String, TenantStatus> = BTreeMap::new();
    let entry = |tenants: &mut BTreeMap<String, TenantStatus>, tenant: &str| {
        tenants
            .entry(tenant.to_string())
            .or_insert_with(|| TenantStatus {
                tenant_id: tenant.to_string(),
                connections: Vec::new(),
                subscriptions: Vec::new(),
                last_heartbeat: None,
                bots: Vec::new(),
            })
            .tenant_id
            .clone()
    };
    for connection in connections {
        let key = entry(&mut tenants, &connection.tenant_id);
        tenants
            .get_mut(&key)
            .expect("added")
            .connections
            .push(connection);
    }
    for subscription in subscriptions.into_iter().filter(|s| s.wanted) {
        let key = entry(&mut tenants, &subscription.tenant_id);
        tenants
            .get_mut(&key)
            .expect("added")
            .subscriptions
            .push(subscription);
    }
    for run in heartbeats {
        let key = entry(&mut tenants, &run.tenant_id);
        tenants.get_mut(&key).expect("added").last_heartbeat = Some(run);
    }
    for bot in crate::bots::list(store).await.map_err(|e| failed(&e))? {
        let key = entry(&mut tenants, &bot.tenant_id);
        tenants.get_mut(&key).expect("added").bots.push(bot);
    }
    Ok(Status {
        tenants: tenants.into_values().collect(),
        queue: queue.depth_by_kind().await.map_err(|e| failed(&e))?,
        recent_failures: queue.recent_failures(5).await.map_err(|e| failed(&e))?,
    })
}

fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if status.tenants.is_empty() {
        out.push_str(
            "no tenants; connect one with `tenantd tenant add-app` or `tenantd tenant connect`\n",
        );
    }
    for tenant in &status.tenants {
        let _ = writeln!(out, "tenant {}", tenant.tenant_id);
        if tenant.connections.is_empty() {
            out.push_str("  connections   none\n");
        }
        for c in &tenant.connections {
            let _ = writeln!(
                out,
                "  connection    {} {:<9} {:<20} {:<24} token {}",
                c.id,
                c.auth_mode.as_str(),
                c.status.as_str(),
                c.reason.as_deref().unwrap_or("-"),
                when(c.token_expires_at),
            );
        }
        let active = tenant
            .subscriptions
            .iter()
            .filter(|s| s.status == "active")
            .count();
        let soonest = tenant
            .subscriptions
            .iter()
            .filter(|s| s.status == "active")
            .filter_map(|s| s.expires_at)
            .min();
        let _ = writeln!(
            out,
            "  subscriptions {active} active of {}, soonest expiry {}",
            tenant.subscriptions.len(),
            when(soonest)
        );
        for s in tenant.subscriptions.iter().filter(|s| s.status != "active") {
            let _ = writeln!(
                out,
                "    {} {} ({}) {}",
                s.id,
                s.status,
                s.reason.as_deref().unwrap_or("-"),
                s.resource
            );
        }
        match &tenant.last_heartbeat {
            Some(run) => {
                let _ = writeln!(
                    out,
                    "  heartbeat     last run {} {}{}",
                    run.state,
                    when(Some(run.run_at / 1000)),
                    run.last_reason
                        .as_deref()
                        .map(|reason| format!(" ({reason})"))
                        .unwrap_or_default()
                );
            }
            None => out.push_str("  heartbeat     no runs\n"),
        }
        for bot in &tenant.bots {
            let _ = writeln!(
                out,
                "  bot           {} {:<30} {:<12} step {}{}",
                bot.id,
                bot.name,
                bot.state,
                bot.step.as_deref().unwrap_or("none"),
                bot.reason
                    .as_deref()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default()
            );
        }
    }
    out.push_str("\nqueue\n");
    if status.queue.is_empty() {
        out.push_str("  nothing waiting, running or dead\n");
    } else {
        let _ = writeln!(
            out,
            "  {:<26} {:>8} {:>8} {:>6}  OLDEST DUE",
            "KIND", "WAITING", "RUNNING", "DEAD"
        );
        for depth in &status.queue {
            let _ = writeln!(
                out,
                "  {:<26} {:>8} {:>8} {:>6}  {}",
                depth.kind,
                depth.waiting,
                depth.running,
                depth.dead,
                if depth.oldest_due_ms > 0 {
                    format!("{:.1} s", depth.oldest_due_ms as f64 / 1000.0)
                } else {
                    "-".into()
                }
            );
        }
    }
    out.push_str("\nlatest failures\n");
    if status.recent_failures.is_empty() {
        out.push_str("  none\n");
    }
    for job in &status.recent_failures {
        let _ = writeln!(
            out,
            "  {} {:<20} {:<9} {} {}",
            job.id,
            job.kind,
            job.state,
            job.last_reason.as_deref().unwrap_or("-"),
            job.tenant_id
        );
    }
    out
}
