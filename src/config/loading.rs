//! Loading: figment layering (defaults < TOML < `TENANTD_<SECTION>__<KEY>` < flags), the
//! `graph.cloud` presets applied, `<key>_file` secrets read (systemd credentials), and figment's
//! errors turned into problems with fixes.
//!
//! Owns no tables. Invariants: what [`load`] returns was validated; an error names the key and
//! where its value came from, never the value of a secret key.

use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use url::Url;

use crate::secret::REDACTED;

use super::validation::{describe_origin, origin_of, validate, FIX_DATABASE_URL, FIX_LOG_LEVEL};
use super::*;

/// Environment variables with the prefix that are not configuration keys (no warning for them).
pub(super) const NON_KEY_ENV_VARS: &[&str] = &[
    "TENANTD_CONFIG",
    "TENANTD_TEST_POSTGRES_URL",
    "TENANTD_REQUIRE_POSTGRES",
];
/// Keys whose values are secrets: their values never appear in error messages.
pub(super) const SECRET_KEYS: &[&str] = &["database.url"];

/// A command-line flag that sets a configuration key; it wins over every other layer.
#[derive(Debug, Clone)]
pub struct FlagOverride {
    /// Dotted key, e.g. `log.level`.
    pub key: &'static str,
    /// The flag as typed, for error messages, e.g. `--log-level`.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
}

impl Provider for FlagOverride {
    fn metadata(&self) -> Metadata {
        let flag = self.flag;
        Metadata::named(format!("the {flag} flag"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Switches (`listener.allow_http_public_url`) are booleans, not the words.
        let value = match self.value.as_str() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            other => Value::from(other.to_string()),
        };
        let dict = figment::util::nest(self.key, value)
            .into_dict()
            .expect("nest returns a dict");
        Ok(Profile::Default.collect(dict))
    }
}

/// A loaded, validated configuration and what the operator should hear about it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The TOML file read, if any.
    pub file: Option<PathBuf>,
    /// Things that are not errors but probably mistakes (e.g. an env var that sets nothing).
    pub warnings: Vec<String>,
}

/// Loads the configuration: defaults, then the TOML file (`file`, or
/// [`DEFAULT_CONFIG_PATH`] when present), then `TENANTD_<SECTION>__<KEY>` environment variables,
/// then `flags`; reads `<key>_file` secrets; validates.
///
/// # Errors
/// [`ConfigError`] naming each bad key, its origin and the fix.
pub fn load(file: Option<&Path>, flags: &[FlagOverride]) -> Result<LoadedConfig, ConfigError> {
    let file = match file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError::FileNotFound {
                path: path.to_path_buf(),
            })
        }
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.is_file()),
    };

    let mut figment = Figment::new();
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only `PREFIX_SECTION__KEY` names are keys; `TENANTD_CONFIG` and test switches are not.
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    for flag in flags {
        figment = figment.merge(flag.clone());
    }

    let mut config: Config = figment.extract().map_err(|err| {
        ConfigError::Invalid(
            err.into_iter()
                .map(|e| describe_figment_error(&e))
                .collect(),
        )
    })?;
    resolve_secret_files(&figment, &mut config)?;
    apply_cloud(&figment, &mut config);

    let problems = validate(&config, &figment);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }

    Ok(LoadedConfig {
        config,
        file,
        warnings: env_warnings(std::env::vars().map(|(name, _)| name)),
    })
}

/// `graph.cloud` decides `graph.base_url` and `identity.authority` where they were not given.
pub(super) fn apply_cloud(figment: &Figment, config: &mut Config) {
    let cloud = config.graph.cloud;
    if figment.find_value("graph.base_url").is_err() {
        config.graph.base_url = cloud.graph_base_url();
    }
    if figment.find_value("identity.authority").is_err() {
        config.identity.authority = Url::parse(cloud.authority()).expect("preset URLs parse");
    }
}

/// Reads `database.url_file` (and future `<key>_file` secrets) into their keys.
pub(super) fn resolve_secret_files(
    figment: &Figment,
    config: &mut Config,
) -> Result<(), ConfigError> {
    let Some(path) = config.database.url_file.clone() else {
        return Ok(());
    };
    if figment.find_value("database.url").is_ok() {
        return Err(ConfigError::Invalid(vec![ConfigProblem {
            key: "database.url_file".into(),
            origin: origin_of(figment, "database.url_file"),
            problem: "both `database.url` and `database.url_file` are set".into(),
            fix: "keep only one of them".into(),
        }]));
    }
    let value = read_secret_file("database.url_file", &path)?;
    config.database.url = DatabaseUrl::new(value);
    Ok(())
}

/// Reads a secret from a file; a relative path is resolved in `$CREDENTIALS_DIRECTORY` when
/// systemd set one (`LoadCredential=`). Trailing newlines are not part of the secret.
pub(super) fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let resolved = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    };
    let contents = std::fs::read_to_string(&resolved).map_err(|err| ConfigError::SecretFile {
        key: key.into(),
        path: resolved.clone(),
        reason: err.kind().to_string(),
    })?;
    Ok(contents.trim_end_matches(['\n', '\r']).to_string())
}

/// Turns one figment/serde error into a problem with a fix, without echoing secret values.
pub(super) fn describe_figment_error(err: &figment::Error) -> ConfigProblem {
    // A file that is not valid TOML (a duplicate key, a syntax error) names no key: say so.
    let key = if err.path.is_empty() {
        "config file".to_string()
    } else {
        err.path.join(".")
    };
    let origin = err
        .metadata
        .as_ref()
        .map(|metadata| describe_origin(metadata, &err.path));
    let secret = SECRET_KEYS.contains(&key.as_str());
    let (problem, fix) = match &err.kind {
        Kind::UnknownField(field, expected) => {
            let suggestion = expected
                .iter()
                .map(|candidate| (strsim::levenshtein(field, candidate), *candidate))
                .filter(|(distance, _)| *distance <= 3)
                .min()
                .map(|(_, candidate)| format!("did you mean `{candidate}`? "))
                .unwrap_or_default();
            (
                "unknown key".to_string(),
                format!(
                    "{suggestion}remove it or use one of: {}",
                    expected.join(", ")
                ),
            )
        }
        Kind::InvalidType(actual, expected) => {
            let found = if secret {
                "a value of another type".to_string()
            } else {
                actual.to_string()
            };
            (format!("expected {expected}, found {found}"), fix_for(&key))
        }
        Kind::InvalidValue(actual, expected) => {
            let found = if secret {
                REDACTED.to_string()
            } else {
                actual.to_string()
            };
            (
                format!("invalid value {found}: expected {expected}"),
                fix_for(&key),
            )
        }
        Kind::UnknownVariant(variant, expected) => (
            format!("unknown value `{variant}`"),
            format!("use one of: {}", expected.join(", ")),
        ),
        Kind::Message(message) if !secret => (message.clone(), fix_for(&key)),
        other if !secret => (other.to_string(), fix_for(&key)),
        _ => ("invalid value".to_string(), fix_for(&key)),
    };
    ConfigProblem {
        key,
        origin,
        problem,
        fix,
    }
}

pub(super) fn fix_for(key: &str) -> String {
    let fix = match key {
        "admin.bind" => "use HOST:PORT such as \"127.0.0.1:9090\"",
        "listener.bind" => "use HOST:PORT such as \"0.0.0.0:8080\"",
        "database.url" => FIX_DATABASE_URL,
        "log.level" => FIX_LOG_LEVEL,
        "log.format" => "use \"pretty\" or \"json\"",
        "graph.base_url"
        | "graph.developer_portal_url"
        | "identity.authority"
        | "listener.public_url" => {
            "use an absolute https:// URL"
        }
        "database.url_file" => "use a path to a file holding only the URL",
        "config file" => "make the file valid TOML (each key once per section); config/tenantd.example.toml shows the layout",
        _ if key.ends_with("_seconds") || key.ends_with("max_connections") => "use a whole number",
        _ => "see config/tenantd.example.toml for the accepted values",
    };
    fix.to_string()
}

/// Warnings for `TENANTD_*` variables that set nothing, such as `TENANTD_LOG_LEVEL` written
/// with one underscore where two are needed.
pub(super) fn env_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|name| name.starts_with(ENV_PREFIX))
        .filter(|name| !name.contains("__") && !NON_KEY_ENV_VARS.contains(&name.as_str()))
        .map(|name| {
            format!(
                "environment variable {name} sets no configuration key; \
                 keys are TENANTD_<SECTION>__<KEY> with two underscores, e.g. TENANTD_LOG__LEVEL"
            )
        })
        .collect()
}
