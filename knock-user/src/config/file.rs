//! The file as written: what serde reads, with the line of every value
//! (`Spanned`), and the files its rules name, read next to it (`load`).
//!
//! `[limits]`, `[flows]`, `[penalty]` and `conceal` need no more checks
//! than their types make (the limits' range aside), and the validated
//! configuration keeps them as written.

use std::{
    fmt, fs,
    ops::Range,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use knock_common::IPPROTO_UDP;
use serde::Deserialize;
use toml::Spanned;

use super::{
    fleet::OfflineSpend, rotating, spa::DEFAULT_LISTEN, values::ConfigDuration, values::GrantScope,
    values::PortSpec, values::Prefix,
};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    pub pin_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub allow: Vec<Spanned<Prefix>>,
    #[serde(default)]
    pub deny: Vec<Spanned<Prefix>>,
    #[serde(default)]
    pub flood_events_per_second: Option<u32>,
    #[serde(default)]
    pub conceal: Conceal,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub flows: FlowTimeouts,
    #[serde(default)]
    pub penalty: PenaltyConfig,
    #[serde(default)]
    pub spa_datagrams_per_second: Option<u32>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<FileRule>,
    #[serde(default, rename = "spa")]
    pub spas: Vec<FileSpa>,
    #[serde(default)]
    pub fleet: Option<FileFleet>,
}

/// `[fleet]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileFleet {
    pub etcd: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub node: Option<Spanned<String>>,
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub cert_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub offline_spend: OfflineSpend,
    /// What `ca_file`, `cert_file` and `key_file` name, as `File::load`
    /// read them, in that order.
    #[serde(skip)]
    pub tls_files: [Option<Loaded>; 3],
    /// This machine's host name, the default `node`, as `File::load` read it.
    #[serde(skip)]
    pub hostname: Option<String>,
}

/// A `[[rule]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRule {
    pub name: Spanned<String>,
    #[serde(default)]
    pub sequence: Option<Spanned<Vec<PortSpec>>>,
    #[serde(default)]
    pub sequences_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub rotate: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    pub steps: Option<Spanned<usize>>,
    #[serde(default)]
    pub port_range: Option<Spanned<rotating::PortRange>>,
    pub sequence_timeout: ConfigDuration,
    pub open_for: ConfigDuration,
    pub protect: Spanned<Vec<PortSpec>>,
    #[serde(default)]
    pub grant_scope: Option<Spanned<GrantScope>>,
    /// What `sequences_file` names, as `File::load` read it.
    #[serde(skip)]
    pub sequences: Option<Loaded>,
    /// What `secret_file` names, as `File::load` read it, and its
    /// permission bits (or why they could not be read).
    #[serde(skip)]
    pub secret: Option<(Loaded, Result<u32, String>)>,
}

/// An `[[spa]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpa {
    pub name: Spanned<String>,
    #[serde(default)]
    pub listen: Option<Spanned<PortSpec>>,
    pub key_base64: Spanned<String>,
    pub hmac_key_base64: Spanned<String>,
    pub open_for: ConfigDuration,
    pub protect: Spanned<Vec<PortSpec>>,
    #[serde(default)]
    pub max_age: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    pub require_source_address: bool,
    #[serde(default)]
    pub source: Option<Spanned<Vec<Prefix>>>,
    #[serde(default)]
    pub grant_scope: Option<Spanned<GrantScope>>,
}

impl FileSpa {
    /// The UDP port it listens on; `None` when `listen` is not UDP.
    pub fn listen_port(&self) -> Option<u16> {
        match &self.listen {
            None => Some(DEFAULT_LISTEN),
            Some(listen) => {
                let spec = listen.get_ref().0;
                (spec.proto == IPPROTO_UDP).then_some(spec.port)
            }
        }
    }

    /// Where `listen` is written, else where the entry starts.
    pub fn listen_span(&self) -> Range<usize> {
        self.listen
            .as_ref()
            .map_or_else(|| self.name.span(), Spanned::span)
    }
}

/// A file a rule names, read before validation so validation is a function
/// of data alone; a file that cannot be read is kept as the problem, told
/// in its turn.
pub(super) struct Loaded {
    /// Where it was read: the name written, joined to the configuration's
    /// directory.
    pub path: PathBuf,
    /// Its text, or why it could not be read.
    pub text: Result<String, String>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the text: it may be a secret.
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    fn read(dir: &Path, written: &Spanned<PathBuf>) -> Loaded {
        let path = dir.join(written.get_ref());
        let text = fs::read_to_string(&path).map_err(|e| e.to_string());
        Loaded { path, text }
    }
}

impl File {
    /// Reads the files it names (`sequences_file`, `secret_file`, `[fleet]`'s
    /// TLS files), relative to `dir`, the directory the configuration is in,
    /// and the host name a `[fleet]` without `node` stands for.
    pub fn load(mut self, dir: &Path) -> File {
        for rule in &mut self.rules {
            rule.sequences = rule.sequences_file.as_ref().map(|f| Loaded::read(dir, f));
            rule.secret = rule.secret_file.as_ref().map(|f| {
                let loaded = Loaded::read(dir, f);
                let mode = fs::metadata(&loaded.path)
                    .map(|meta| meta.permissions().mode())
                    .map_err(|e| e.to_string());
                (loaded, mode)
            });
        }
        if let Some(fleet) = &mut self.fleet {
            let read =
                |file: &Option<Spanned<PathBuf>>| file.as_ref().map(|f| Loaded::read(dir, f));
            fleet.tls_files = [
                read(&fleet.ca_file),
                read(&fleet.cert_file),
                read(&fleet.key_file),
            ];
            if fleet.node.is_none() {
                fleet.hostname = fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|name| name.trim().to_owned());
            }
        }
        self
    }
}

/// Map sizes: the most sources after a first step, sources further along,
/// live grants, admitted flows and failing sources the filter keeps at once.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub first_step_entries: Spanned<u32>,
    pub progress_entries: Spanned<u32>,
    pub grant_entries: Spanned<u32>,
    pub flow_entries: Spanned<u32>,
    pub penalty_entries: Spanned<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            first_step_entries: Spanned::new(0..0, 1 << 20),
            progress_entries: Spanned::new(0..0, 16_384),
            grant_entries: Spanned::new(0..0, 8_192),
            flow_entries: Spanned::new(0..0, 65_536),
            penalty_entries: Spanned::new(0..0, 65_536),
        }
    }
}

/// A source whose attempts fail `failures` times within `window` has its
/// knocks ignored for `duration`; `failures = 0` turns this off.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PenaltyConfig {
    pub failures: u32,
    pub window: ConfigDuration,
    pub duration: ConfigDuration,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: ConfigDuration(Duration::from_secs(60)),
            duration: ConfigDuration(Duration::from_secs(300)),
        }
    }
}

/// How long admitted flows live without traffic.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowTimeouts {
    pub tcp_idle: ConfigDuration,
    pub tcp_closing: ConfigDuration,
    pub udp_idle: ConfigDuration,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_idle: ConfigDuration(Duration::from_secs(24 * 3600)),
            tcp_closing: ConfigDuration(Duration::from_secs(120)),
            udp_idle: ConfigDuration(Duration::from_secs(120)),
        }
    }
}

/// What a packet stopped at a knock port, or at a protected port for a
/// source without a grant, gets back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conceal {
    /// What a closed port of this host answers: a TCP RST, or an ICMP port
    /// unreachable (rate limited as the kernel limits it).
    #[default]
    Closed,
    /// Nothing, for hosts whose firewall drops every unused port anyway.
    Drop,
}
