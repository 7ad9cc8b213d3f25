//! `tenantd queue ...`: look at the work queue and act on single jobs, with the daemon running
//! or not.

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
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
    let Some(store) = super::open_store(config).await else {
        return EXIT_FAILURE;
    };
    let queue = Queue::new(store.clone());
    let code = match command {
        QueueCommand::Stats { json } => match queue.stats().await {
            Ok(stats) if *json => {
                let map: serde_json::Map<String, serde_json::Value> = stats
                    .into_iter()
                    .map(|(state, n)| (state, n.into()))
                    .collect();
                println!("{}", serde_json::Value::Object(map));
                EXIT_OK
            }
            Ok(stats) => {
                for (state, count) in stats {
                    println!("{state:<10} {count}");
                }
                EXIT_OK
            }
            Err(err) => {
                eprintln!("tenantd: {err}");
                EXIT_FAILURE
            }
        },
        QueueCommand::List { state, limit, json } => {
            let Some(state) = JobState::parse(state) else {
                eprintln!("tenantd: --state {state}: use available, running, succeeded, failed, dead or cancelled");
                return EXIT_USAGE;
            };
            match queue.list(state, *limit).await {
                Ok(jobs) if *json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&jobs).expect("jobs serialize")
                    );
                    EXIT_OK
                }
                Ok(jobs) => {
                    for job in jobs {
                        println!(
                            "{}  {:<20} {:<36} attempts {}/{}  {}",
                            job.id,
                            job.kind,
                            job.tenant_id,
                            job.attempts,
                            job.max_attempts,
                            job.last_reason.as_deref().unwrap_or("-")
                        );
                    }
                    EXIT_OK
                }
                Err(err) => {
                    eprintln!("tenantd: {err}");
                    EXIT_FAILURE
                }
            }
        }
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
    code
}

fn report(
    result: Result<bool, crate::queue::QueueError>,
    id: &str,
    done: &str,
    refused: &str,
) -> i32 {
    match result {
        Ok(true) => {
            println!("job {id} {done}");
            EXIT_OK
        }
        Ok(false) => {
            eprintln!("tenantd: job {id} {refused} (or does not exist)");
            EXIT_USAGE
        }
        Err(err) => {
            eprintln!("tenantd: {err}");
            EXIT_FAILURE
        }
    }
}
