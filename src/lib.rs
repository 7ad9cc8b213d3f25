//! tenantd keeps Microsoft 365 tenants connected, alive and in sync through Microsoft Graph.
//!
//! Data flows one way: [`config`] → [`store`] (SQLite or PostgreSQL, migrations) → vault
//! (tokens) → Graph client (the only path to Graph) → queue and workers → jobs. The HTTP
//! listeners ([`http`]) and the scheduler only read state or enqueue. [`app`] is the only place
//! that wires the parts together; [`cli`] (with `main`) is the only one that knows about
//! processes, signals and exit codes. See docs/ARCHITECTURE.md.

#![forbid(unsafe_code)]

pub mod app;
pub mod attribution;
pub mod audit;
pub mod bots;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cron;
pub mod demo;
pub mod graph;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod instance;
pub mod intake;
pub mod jobs;
pub mod key_check;
pub mod mailbox;
pub mod metrics;
pub mod oauth;
pub mod queue;
pub mod retry;
pub mod rich_notifications;
pub mod runs;
pub mod scheduler;
pub mod secret;
pub mod store;
pub mod subscriptions;
pub mod systemd;
pub mod teams_package;
pub mod telemetry;
pub mod tls;
pub mod validation_tokens;
pub mod vault;
pub mod worker;
