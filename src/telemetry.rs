//! Logging: one tracing subscriber for the process, `pretty` for terminals or `json` for
//! journald and container collectors, with a filter that SIGHUP can change at run time.
//!
//! Owns no tables. Invariants: logs go to stderr (stdout belongs to command output); field names
//! are dotted and stable (`tenant.id`, `job.id`, `http.route`); no secret is ever a field value
//! (secret types print `[redacted]`).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter string does not parse.
    #[error("invalid log filter: {0}")]
    Filter(String),
    /// A global subscriber was already installed, or the reload target is gone.
    #[error("logging is unavailable: {0}")]
    Install(String),
}

/// Changes the active log filter (SIGHUP reload).
#[derive(Clone)]
pub struct LogLevelHandle {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevelHandle {
    /// Replaces the filter, e.g. `debug` or `info,tenantd::http=debug`.
    ///
    /// # Errors
    /// [`TelemetryError::Filter`] when `level` does not parse; the old filter stays.
    pub fn set_level(&self, level: &str) -> Result<(), TelemetryError> {
        let filter = parse_filter(level)?;
        self.handle
            .reload(filter)
            .map_err(|err| TelemetryError::Install(err.to_string()))
    }
}

fn parse_filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|err| TelemetryError::Filter(err.to_string()))
}

/// Installs the process-wide subscriber.
///
/// # Errors
/// [`TelemetryError`] when the filter is invalid or a subscriber is already installed.
pub fn init(format: LogFormat, level: &str) -> Result<LogLevelHandle, TelemetryError> {
    let (filter, handle) = reload::Layer::new(parse_filter(level)?);
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    Registry::default()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|err| TelemetryError::Install(err.to_string()))?;
    Ok(LogLevelHandle { handle })
}
