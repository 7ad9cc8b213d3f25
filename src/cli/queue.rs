//! `tenantd queue ...`: look at the work queue and act on single jobs, with the daemon running
//! or not.

use clap::Subcommand;

use super::{exit_code, CliError, CliResult};
use crate::config::Config;
use crate::queue::{JobState, Queue};

/// `tenantd queue ...`
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Jobs by state
    Stats {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Jobs in one state, oldest first
    List {
        /// available, running, succeeded, failed, dead or cancelled
        #[arg(long, default_value = "dead", value_name = "STATE")]
        state: String,
        /// At most this many
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run a dead, failed or cancelled job again, with fresh attempts
    Retry {
        /// Job id
        id: String,
    },
    /// Cancel a job that has not started
    Cancel {
        /// Job id
        id: String,
    },
}

/// Runs one `queue` command and returns the exit code.
pub(crate) async fn run(config: &Config, command: &QueueCommand) -> i32 {
    let access = match command {
        QueueCommand::Stats { .. } | QueueCommand::List { .. } => super::Access::Read,
        QueueCommand::Retry { .. } | QueueCommand::Cancel { .. } => super::Access::Write,
    };
    let store = match super::open_store(config, access).await {
        Ok(store) => store,
        Err(err) => return exit_code(Err(err)),
    };
    let queue = Queue::new(store.clone());
    let result = match command {
        QueueCommand::Stats { json } => stats(&queue, *json).await,
        QueueCommand::List { state, limit, json } => list(&queue, state, *limit, *json).await,
        QueueCommand::Retry { id } => report(
            queue.retry_now(id).await,
            id,
            "queued again",
            "is not dead, failed or cancelled",
        ),
        QueueCommand::Cancel { id } => report(
            queue.cancel(id).await,
            id,
            "cancelled",
            "is not waiting to start",
        ),
    };
    store.close().await;
    exit_code(result)
}

/// `queue stats`: jobs by state.
async fn stats(queue: &Queue, json: bool) -> CliResult {
    let stats = queue.stats().await.map_err(CliError::failure)?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = stats
            .into_iter()
            .map(|(state, n)| (state, n.into()))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else if stats.is_empty() {
        println!("no jobs");
    } else {
        println!("{:<10} JOBS", "STATE");
        for (state, count) in stats {
            println!("{state:<10} {count}");
        }
    }
    Ok(())
}

/// `queue list`: jobs in one state, oldest first.
async fn list(queue: &Queue, state: &str, limit: u32, json: bool) -> CliResult {
    let Some(state) = JobState::parse(state) else {
        return Err(CliError::usage(format!(
            "--state {state}: use available, running, succeeded, failed, dead or cancelled"
        )));
    };
    let jobs = queue.list(state, limit).await.map_err(CliError::failure)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&jobs).expect("jobs serialize")
        );
    } else if jobs.is_empty() {
        println!("no {} jobs", state.as_str());
    } else {
        println!(
            "{:<32}  {:<20} {:<36} {:<8}  LAST REASON",
            "ID", "KIND", "TENANT", "ATTEMPTS"
        );
        for job in jobs {
            println!(
                "{}  {:<20} {:<36} {:<8}  {}",
                job.id,
                job.kind,
                job.tenant_id,
                format!("{}/{}", job.attempts, job.max_attempts),
                job.last_reason.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn report(
    result: Result<bool, crate::queue::QueueError>,
    id: &str,
    done: &str,
    refused: &str,
) -> CliResult {
    if result.map_err(CliError::failure)? {
        println!("job {id} {done}");
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "job {id} {refused} (or does not exist)"
        )))
    }
}
