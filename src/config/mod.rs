//! Configuration: typed settings layered from built-in defaults, a TOML file, `TENANTD_…`
//! environment variables and command-line flags (figment), validated before anything starts.
//!
//! Owns no tables. Invariants: a [`Config`] returned by [`load`] is valid; every error names the
//! key, where the value came from and how to fix it, and never prints a secret value; secrets
//! are held in [`Secret`](crate::secret::Secret) types and may come from `<key>_file` paths
//! (systemd credentials).
//!
//! Its parts: the sections in `schema.rs`, the layering in `loading.rs`, the checks serde
//! cannot make in `validation.rs`; the errors are here.

use std::fmt;
use std::path::PathBuf;

mod loading;
mod schema;
mod validation;

#[cfg(test)]
use loading::*;
pub use loading::{load, FlagOverride, LoadedConfig};
pub use schema::*;
#[cfg(test)]
use validation::*;
pub use validation::{heartbeat_problems, subscription_target};

/// Prefix of environment variables that set configuration keys: `TENANTD_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "TENANTD_";
/// Config file read when `--config` is not given, if it exists (relative to the working directory).
pub const DEFAULT_CONFIG_PATH: &str = "config/tenantd.toml";
/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `database.url`.
    pub key: String,
    /// Where the value came from: a file, an environment variable, a flag.
    pub origin: Option<String>,
    /// What is wrong, without the secret value.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        write!(f, ": {}\n    fix: {}", self.problem, self.fix)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` named a file that is not there.
    #[error("config file {} does not exist\n    fix: create it (config/tenantd.example.toml documents every key) or pass another --config", .path.display())]
    FileNotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A `<key>_file` could not be read.
    #[error("`{key}` = {}: cannot read the file: {reason}\n    fix: point it at a readable file holding only the value", .path.display())]
    SecretFile {
        /// The `_file` key.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// The I/O error (no contents).
        reason: String,
    },
    /// One or more keys are wrong.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    /// The problems, when the error is about keys (for tests and tooling).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

impl Config {
    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail fixes the closure's error type"
)]
mod tests {
    use super::*;
    use figment::Jail;
    use std::path::Path;

    fn flag(key: &'static str, flag: &'static str, value: &str) -> FlagOverride {
        FlagOverride {
            key,
            flag,
            value: value.into(),
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_configured() {
        Jail::expect_with(|_jail| {
            let loaded = load(None, &[]).expect("defaults are valid");
            let config = loaded.config;
            assert_eq!(config.database.url.expose(), "sqlite://data/tenantd.db");
            assert_eq!(config.admin.bind.to_string(), "127.0.0.1:9090");
            assert_eq!(config.listener.bind.to_string(), "0.0.0.0:8080");
            assert_eq!(
                config.graph.base_url.as_str(),
                "https://graph.microsoft.com/v1.0"
            );
            assert_eq!(
                config.identity.authority.as_str(),
                "https://login.microsoftonline.com/"
            );
            assert_eq!(config.log.format, LogFormat::Pretty);
            assert_eq!(config.shutdown.grace_seconds, 30);
            assert!(loaded.file.is_none());
            Ok(())
        });
    }

    /// learn.microsoft.com/graph/deployments: each cloud's identity authority and Graph root;
    /// .../graph/sdks/national-clouds: the token audience is the national Graph host.
    #[test]
    fn a_cloud_sets_authority_graph_host_and_token_audience_together() {
        Jail::expect_with(|jail| {
            for (cloud, graph, authority) in [
                (
                    "global",
                    "https://graph.microsoft.com",
                    "https://login.microsoftonline.com/",
                ),
                (
                    "usgov",
                    "https://graph.microsoft.us",
                    "https://login.microsoftonline.us/",
                ),
                (
                    "usgov-dod",
                    "https://dod-graph.microsoft.us",
                    "https://login.microsoftonline.us/",
                ),
                (
                    "china",
                    "https://microsoftgraph.chinacloudapi.cn",
                    "https://login.chinacloudapi.cn/",
                ),
            ] {
                jail.set_env("TENANTD_GRAPH__CLOUD", cloud);
                let config = load(None, &[]).unwrap().config;
                assert_eq!(
                    config.graph.base_url.as_str(),
                    format!("{graph}/v1.0"),
                    "{cloud}"
                );
                assert_eq!(config.identity.authority.as_str(), authority, "{cloud}");
                assert_eq!(config.graph.token_resource(), graph, "{cloud}");
            }
            // Explicit URLs win; a proxy in front of Graph keeps the cloud's audience, and a
            // Graph host names its own.
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov");
            jail.set_env(
                "TENANTD_GRAPH__BASE_URL",
                "https://graph-proxy.internal/v1.0",
            );
            jail.set_env(
                "TENANTD_IDENTITY__AUTHORITY",
                "https://login-proxy.internal",
            );
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.graph.base_url.as_str(),
                "https://graph-proxy.internal/v1.0"
            );
            assert_eq!(
                config.identity.authority.as_str(),
                "https://login-proxy.internal/"
            );
            assert_eq!(config.graph.token_resource(), "https://graph.microsoft.us");
            jail.set_env(
                "TENANTD_GRAPH__BASE_URL",
                "https://dod-graph.microsoft.us/v1.0",
            );
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov-dod");
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.graph.token_resource(),
                "https://dod-graph.microsoft.us"
            );
            Ok(())
        });
    }

    #[test]
    fn a_graph_host_or_authority_of_another_cloud_names_the_key_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_GRAPH__BASE_URL", "https://graph.microsoft.us/v1.0");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("graph.base_url"), "{err}");
            assert!(
                err.contains("`usgov` cloud but graph.cloud is `global`"),
                "{err}"
            );
            assert!(err.contains("set graph.cloud"), "{err}");
            jail.set_env("TENANTD_GRAPH__CLOUD", "usgov");
            jail.set_env(
                "TENANTD_IDENTITY__AUTHORITY",
                "https://login.chinacloudapi.cn",
            );
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("identity.authority"), "{err}");
            assert!(!err.contains("graph.base_url"), "{err}");
            jail.set_env("TENANTD_GRAPH__CLOUD", "mars");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("graph.cloud"), "{err}");
            assert!(err.contains("usgov-dod"), "the accepted values: {err}");
            Ok(())
        });
    }

    /// concepts/change-notifications-delivery-webhooks.md: the endpoint must be HTTPS.
    #[test]
    fn an_http_public_url_is_refused_unless_allowed() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_LISTENER__PUBLIC_URL", "http://tenantd.example.com");
            let err = load(None, &[]).unwrap_err().to_string();
            assert!(err.contains("listener.public_url"), "{err}");
            assert!(
                err.contains("only posts notifications to https://"),
                "{err}"
            );
            assert!(err.contains("allow_http_public_url"), "the fix: {err}");
            jail.set_env("TENANTD_LISTENER__ALLOW_HTTP_PUBLIC_URL", "true");
            assert!(load(None, &[]).is_ok());
            jail.set_env("TENANTD_LISTENER__ALLOW_HTTP_PUBLIC_URL", "false");
            jail.set_env(
                "TENANTD_LISTENER__PUBLIC_URL",
                "https://tenantd.example.com",
            );
            assert!(load(None, &[]).is_ok());
            // The demo's switch arrives as a flag.
            jail.set_env("TENANTD_LISTENER__PUBLIC_URL", "http://127.0.0.1:8080");
            let flags = [flag("listener.allow_http_public_url", "demo", "true")];
            assert!(load(None, &flags).is_ok());
            Ok(())
        });
    }

    #[test]
    fn layers_override_in_order_file_then_env_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tenantd.toml",
                "[log]\nlevel = \"debug\"\nformat = \"json\"\n[admin]\nbind = \"127.0.0.1:1111\"\n",
            )?;
            jail.set_env("TENANTD_ADMIN__BIND", "127.0.0.1:2222");
            jail.set_env("TENANTD_DATABASE__MAX_CONNECTIONS", "3");
            let flags = [flag("log.level", "--log-level", "warn")];
            let config = load(Some(Path::new("tenantd.toml")), &flags)
                .unwrap()
                .config;
            assert_eq!(config.log.format, LogFormat::Json, "file beats default");
            assert_eq!(config.admin.bind.port(), 2222, "env beats file");
            assert_eq!(config.database.max_connections, 3);
            assert_eq!(config.log.level, "warn", "flag beats file");
            Ok(())
        });
    }

    #[test]
    fn the_default_config_file_is_read_when_present() {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(DEFAULT_CONFIG_PATH, "[shutdown]\ngrace_seconds = 7\n")?;
            let loaded = load(None, &[]).unwrap();
            assert_eq!(loaded.config.shutdown.grace_seconds, 7);
            assert_eq!(loaded.file.as_deref(), Some(Path::new(DEFAULT_CONFIG_PATH)));
            Ok(())
        });
    }

    #[test]
    fn an_explicit_missing_config_file_is_an_error() {
        Jail::expect_with(|_jail| {
            let err = load(Some(Path::new("nope.toml")), &[]).unwrap_err();
            assert!(matches!(err, ConfigError::FileNotFound { .. }), "{err}");
            assert!(err.to_string().contains("nope.toml"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named_with_a_suggestion() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[database]\nurll = \"sqlite://x.db\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "database.urll");
            assert_eq!(problem.problem, "unknown key");
            assert!(
                problem.fix.contains("did you mean `url`"),
                "{}",
                problem.fix
            );
            assert!(problem.origin.as_deref().unwrap().contains("t.toml"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_section_is_named() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[databse]\nurl = \"sqlite://x.db\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "databse");
            assert!(err.problems()[0].fix.contains("did you mean `database`"));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_from_the_environment_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_LOG__LEVLE", "debug");
            let err = load(None, &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "log.levle");
            let origin = problem.origin.as_deref().unwrap();
            assert!(origin.contains("TENANTD_LOG__LEVLE"), "{origin}");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[admin]\nbind = \"not-an-address\"\n")?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "admin.bind");
            assert!(problem.fix.contains("HOST:PORT"), "{}", problem.fix);
            Ok(())
        });
    }

    #[test]
    fn a_heartbeat_scenario_loads_and_each_bad_key_is_named_with_its_fix() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "good.toml",
                "[[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 */20 8-18 * * Mon-Fri\"\ntimezone = \"Europe/Berlin\"\n\
                 users = { count = 12, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\", license_sku = \"ENTERPRISEPACK\" }\n\
                 activities = [ { kind = \"mail\", per_run = 4 }, { kind = \"file\", per_run = 1 }, { kind = \"chat\", per_run = 2 }, { kind = \"event\", per_run = 1 } ]\n",
            )?;
            let loaded = load(Some(Path::new("good.toml")), &[]).unwrap();
            let heartbeat = &loaded.config.heartbeat[0];
            assert_eq!(heartbeat.users.count, 12);
            assert_eq!(heartbeat.activities[2].kind, ActivityKind::Chat);
            jail.create_file(
                "bad.toml",
                "[[heartbeat]]\ntenant = \"contoso.com\"\nschedule = \"*/20 8-18 * * Mon-Fri\"\n\
                 users = { count = 0, prefix = \"Demo User\", domain = \"contoso\", usage_location = \"de\" }\n\
                 activities = [ { kind = \"mail\", per_run = 0 }, { kind = \"mail\", per_run = 1 } ]\n\n\
                 [[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 0 9 * * *\"\ntimezone = \"Mars/Olympus\"\n\
                 users = { count = 1, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\" }\n",
            )?;
            let err = load(Some(Path::new("bad.toml")), &[]).unwrap_err();
            let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "heartbeat[0].tenant",
                    "heartbeat[0].schedule",
                    "heartbeat[0].users.count",
                    "heartbeat[0].users.prefix",
                    "heartbeat[0].users.domain",
                    "heartbeat[0].users.usage_location",
                    "heartbeat[0].activities[0].per_run",
                    "heartbeat[0].activities[1].kind",
                    "heartbeat[1].timezone",
                ]
            );
            assert!(err.problems().iter().all(|p| !p.fix.is_empty()));
            assert!(
                err.problems()[1].fix.contains("seconds"),
                "{}",
                err.problems()[1].fix
            );
            jail.create_file(
                "kind.toml",
                "[[heartbeat]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nschedule = \"0 0 9 * * *\"\n\
                 users = { count = 1, prefix = \"demo\", domain = \"contoso.onmicrosoft.com\", usage_location = \"DE\" }\n\
                 activities = [ { kind = \"fax\", per_run = 1 } ]\n",
            )?;
            let err = load(Some(Path::new("kind.toml")), &[]).unwrap_err();
            assert!(err.to_string().contains("fax"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_subscription_names_its_entry_and_the_fix() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages\"\nchange_types = [\"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"contoso.com\"\nresource = \"users/u/events\"\nchange_types = [\"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/events\"\nchange_types = [\"moved\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages\"\nchange_types = [\"created\"]\ninclude_resource_data = true\n",
            )?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            let problems: Vec<(&str, &str)> = err
                .problems()
                .iter()
                .map(|p| (p.key.as_str(), p.fix.as_str()))
                .collect();
            assert_eq!(
                problems,
                [
                    (
                        "subscriptions[1]",
                        "use the Entra tenant ID of a connected tenant"
                    ),
                    ("subscriptions[2]", "use created, updated and/or deleted"),
                    (
                        "subscriptions[3].include_resource_data",
                        "add the properties Graph should send, e.g. `?$select=subject,from,receivedDateTime`"
                    ),
                ]
            );
            jail.create_file(
                "ok.toml",
                "[[subscriptions]]\ntenant = \"84BD8158-6D4D-4958-8B9F-9D6445542F95\"\nresource = \"/users/u/messages\"\nchange_types = [\"updated\", \"created\"]\n\n\
                 [[subscriptions]]\ntenant = \"84bd8158-6d4d-4958-8b9f-9d6445542f95\"\nresource = \"users/u/messages?$select=subject\"\nchange_types = [\"created\"]\ninclude_resource_data = true\n",
            )?;
            let loaded = load(Some(Path::new("ok.toml")), &[]).unwrap();
            assert_eq!(loaded.config.subscriptions.len(), 2);
            assert!(loaded.config.subscriptions[1].include_resource_data);
            Ok(())
        });
    }

    #[test]
    fn a_bad_log_format_lists_the_choices() {
        Jail::expect_with(|_jail| {
            let err = load(None, &[flag("log.format", "--log-format", "xml")]).unwrap_err();
            let problem = &err.problems()[0];
            assert_eq!(problem.key, "log.format");
            assert!(problem.fix.contains("pretty") && problem.fix.contains("json"));
            assert_eq!(problem.origin.as_deref(), Some("the --log-format flag"));
            Ok(())
        });
    }

    #[test]
    fn validation_rejects_an_unsupported_database_and_a_bad_filter() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_DATABASE__URL", "mysql://root:hunter2@db/x");
            jail.set_env("TENANTD_LOG__LEVEL", "info,[[[");
            let err = load(None, &[]).unwrap_err();
            let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["database.url", "log.level"]);
            assert!(!err.to_string().contains("hunter2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[database]\nurl = [\"postgres://u:hunter2@h/d\"]\n",
            )?;
            let err = load(Some(Path::new("t.toml")), &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "database.url");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn url_file_reads_the_secret_and_honours_the_credentials_directory() {
        Jail::expect_with(|jail| {
            jail.create_dir("creds")?;
            jail.create_file("creds/db-url", "postgres://tenantd:hunter2@db/tenantd\n")?;
            let creds = jail.directory().join("creds");
            jail.set_env("CREDENTIALS_DIRECTORY", creds.display());
            jail.set_env("TENANTD_DATABASE__URL_FILE", "db-url");
            let config = load(None, &[]).unwrap().config;
            assert_eq!(
                config.database.url.expose(),
                "postgres://tenantd:hunter2@db/tenantd"
            );
            assert!(!format!("{config:?}").contains("hunter2"));
            assert!(!config.to_redacted_toml().contains("hunter2"));
            Ok(())
        });
    }

    #[test]
    fn url_and_url_file_together_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("url", "sqlite://a.db")?;
            jail.set_env("TENANTD_DATABASE__URL", "sqlite://b.db");
            jail.set_env("TENANTD_DATABASE__URL_FILE", "url");
            let err = load(None, &[]).unwrap_err();
            assert_eq!(err.problems()[0].key, "database.url_file");
            Ok(())
        });
    }

    #[test]
    fn an_unreadable_url_file_names_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("TENANTD_DATABASE__URL_FILE", "/nonexistent/db-url");
            let err = load(None, &[]).unwrap_err();
            assert!(matches!(err, ConfigError::SecretFile { .. }));
            assert!(err.to_string().contains("database.url_file"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn single_underscore_env_vars_are_warned_about() {
        let names = [
            "TENANTD_LOG_LEVEL",
            "TENANTD_LOG__LEVEL",
            "TENANTD_CONFIG",
            "PATH",
        ]
        .map(String::from);
        let warnings = env_warnings(names.into_iter());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("TENANTD_LOG_LEVEL"));
    }

    #[test]
    fn database_urls_print_without_passwords() {
        for (raw, shown) in [
            ("sqlite://data/tenantd.db", "sqlite://data/tenantd.db"),
            (
                "postgres://u:hunter2@db:5432/x",
                "postgres://u:[redacted]@db:5432/x",
            ),
            (
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/x?sslmode=require",
            ),
            (
                "postgres://db/x?user=u&password=hunter2",
                "postgres://db/x?user=u&password=[redacted]",
            ),
            (
                "postgres://u:p@ss:w@rd@db/x",
                "postgres://u:[redacted]@db/x",
            ),
        ] {
            let url = DatabaseUrl::new(raw);
            assert_eq!(url.redacted(), shown);
            assert_eq!(format!("{url:?}"), shown);
            assert_eq!(url.to_string(), shown);
        }
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let example = include_str!("../../config/tenantd.example.toml");
        let parsed: Config = toml::from_str(example).expect("example parses with no unknown keys");
        assert_eq!(
            parsed.to_redacted_toml(),
            Config::default().to_redacted_toml(),
            "the example's values are the defaults"
        );
        // Optional keys have no default, so the example shows them commented out.
        for optional in ["url_file", "public_url", "base_url", "authority"] {
            assert!(
                example.contains(&format!("# {optional} = ")),
                "{optional} undocumented"
            );
        }
    }
}

/// Fuzzing the configuration loader with a fixed budget: any file text, valid TOML or not,
/// with known keys holding values of any shape, ends in a config or in problems naming keys,
/// never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Figment;
    use proptest::prelude::*;

    fn load_text(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        let figment = Figment::new().merge(Toml::string(text));
        let mut config: Config = figment.extract().map_err(|err| {
            err.into_iter()
                .map(|e| describe_figment_error(&e))
                .collect::<Vec<_>>()
        })?;
        apply_cloud(&figment, &mut config);
        let problems = validate(&config, &figment);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    const KEYS: &[&str] = &[
        "database.url",
        "database.max_connections",
        "graph.cloud",
        "graph.base_url",
        "identity.authority",
        "listener.public_url",
        "listener.bind",
        "listener.max_connections_per_peer",
        "log.level",
        "shutdown.grace_seconds",
        "secrets.key_file",
        "queue.workers",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| format!("{s:?}")),
            Just("[1, \"a\"]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("\"http://[::1\"".to_string()),
            Just("\"usgov\"".to_string()),
            Just("\"https://graph.microsoft.us/v1.0\"".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn any_text_loads_or_names_its_problems(text in any::<String>()) {
            let _ = load_text(&text);
        }

        #[test]
        fn known_keys_with_values_of_any_shape_never_panic(
            entries in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6)
        ) {
            let mut text = String::new();
            for (key, value) in entries {
                let (section, name) = key.split_once('.').expect("dotted");
                text.push_str(&format!("[{section}]\n{name} = {value}\n"));
            }
            if let Err(problems) = load_text(&text) {
                prop_assert!(problems.iter().all(|p| !p.key.is_empty()));
            }
        }
    }
}
