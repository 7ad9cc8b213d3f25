//! systemd service notifications (the `sd_notify` protocol): `READY=1` once listening,
//! `WATCHDOG=1` while healthy, `STOPPING=1` on shutdown, `STATUS=` lines for `systemctl status`.
//!
//! Owns no tables. Invariants: without `NOTIFY_SOCKET` every call is a no-op; a failed send is
//! logged, never fatal (the supervisor, not tenantd, decides what a missing ping means).
//! Protocol: <https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html>.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends state changes to the service manager.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing (tests, or not started by systemd).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and `WATCHDOG_USEC`
    /// (honoured only when `WATCHDOG_PID` is unset or is this process).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|raw| {
            let raw = raw.to_string_lossy().into_owned();
            let address = match raw.strip_prefix('@') {
                Some(name) => abstract_address(name),
                None => SocketAddr::from_pathname(&raw).ok(),
            };
            let socket = UnixDatagram::unbound().ok()?;
            address.map(|address| (socket, address))
        });
        let for_this_process = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_this_process)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// A notifier that sends to the socket at `path`, for tests.
    #[cfg(test)]
    pub(crate) fn for_socket(path: &std::path::Path, watchdog: Option<Duration>) -> Self {
        Self {
            target: Some((
                UnixDatagram::unbound().expect("unbound datagram socket"),
                SocketAddr::from_pathname(path).expect("socket path"),
            )),
            watchdog,
        }
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to ping: half the manager's watchdog timeout, as sd_watchdog_enabled advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target
            .as_ref()
            .and(self.watchdog.map(|timeout| timeout / 2))
    }

    /// Sends newline-separated `KEY=value` assignments.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(err) = socket.send_to_addr(state.as_bytes(), address) {
                tracing::warn!(error = %err, "could not notify the service manager");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.notify("WATCHDOG=1");
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready("ok");
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::for_socket(&path, Some(Duration::from_secs(10)));
        notifier.ready("listening");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
    }
}
