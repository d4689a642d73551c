//! The TOML configuration: parsed with serde (`file`), the files its rules
//! name read next to it (`File::load`), validated as a whole (`validate`),
//! then flattened into what the XDP program's maps hold (`kernel`).
//!
//! Every problem names the line and the key; nothing is applied from a file
//! with any problem. The validated configuration's types are in `model`;
//! this module declares the parts and holds the entry points,
//! `Config::parse` and `Config::parse_in`.

mod file;
pub mod fleet;
mod kernel;
mod model;
pub mod one_time;
pub mod rotating;
pub mod spa;
mod validate;
mod values;

use std::path::Path;

use anyhow::Context as _;

use file::File;
pub use file::{Conceal, FlowTimeouts, Limits, PenaltyConfig};
pub use kernel::{KernelConfig, KernelConfigError, MapLimit};
pub use model::{Config, ConfigError, DEFAULT_PIN_DIR, Rule, RuleKind};
pub use values::{ConfigDuration, MAX_ICMP_KNOCK_SIZE, PortSpec, Prefix, parse_duration};

impl Config {
    /// Parses and validates a whole file.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parses a file whose relative paths (`sequences_file`, `secret_file`)
    /// are relative to `dir`, the directory it is in: the files it names
    /// are read first, then the whole is validated.
    pub fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(ConfigError::Syntax)?;
        validate::validate(text, file.load(dir))
    }
}

/// Reads and validates a configuration file, printing its warnings.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = read_config(path)?;
    for warning in &config.warnings {
        log::warn!("{}: {warning}", path.display());
    }
    Ok(config)
}

/// Reads and validates a configuration file, leaving its warnings to the
/// commands that apply it.
pub fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut config =
        Config::parse_in(&text, dir).with_context(|| format!("{} is not valid", path.display()))?;
    config
        .warnings
        .extend(keys_readable_by_others(path, &config));
    Ok(config)
}

/// Where the filter of the configuration file at `path` is pinned, even
/// when the file is not valid as a whole (nothing to protect yet, a rule
/// gone wrong): `detach` must work when nothing else does. A file that is
/// not TOML at all, or an unreadable one, is an error.
pub fn pin_dir_of(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let invalid = match read_config(path) {
        Ok(config) => return Ok(config.pin_dir),
        Err(error) => error,
    };
    let text = std::fs::read_to_string(path)?;
    let Ok(table) = toml::from_str::<toml::Table>(&text) else {
        return Err(invalid);
    };
    let dir = match table.get("pin_dir") {
        None => DEFAULT_PIN_DIR,
        Some(toml::Value::String(dir)) => dir.as_str(),
        Some(_) => return Err(invalid),
    };
    log::warn!("{invalid:#}; its pin_dir is {dir}");
    Ok(dir.into())
}

/// A warning when the file holds SPA keys (`[[spa]]`) and other users can
/// read it: with the keys, anyone on the host can open the ports (fwknopd
/// warns the same of its access.conf).
fn keys_readable_by_others(path: &Path, config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    if !config.rules.iter().any(|rule| rule.spa().is_some()) {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "holds SPA keys and can be read by other users (mode {:o}); `chmod 600` it",
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod tests;
