//! Integration tests: the real daemon on port 0 against a fresh SQLite file and, when
//! `TENANTD_TEST_POSTGRES_URL` is set, a fresh PostgreSQL database per test.

mod helpers;

mod bots;
mod clouds;
mod connections;
mod delegated;
mod graph_client;
mod heartbeat;
mod lifecycle;
mod listeners;
mod process;
mod queue;
mod rich_notifications;
mod runs;
mod webhooks;
