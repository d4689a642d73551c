//! The command line, as clap defines it: parsed by the `xknock` binary,
//! and the source of its man page and shell completions.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::{config::PortSpec, daemon::events::EventFormat, loader::AttachMode};

/// Port knocking at XDP: protected ports stay invisible until a source sends
/// the right knock sequence.
#[derive(Parser)]
#[command(name = "xknock", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Put the filter on interfaces (or take over the one pinned there) and
    /// stream its events. When it ends, however it ends, the filter stays
    /// attached and enforcing; SIGHUP reloads the configuration.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Interface to filter (repeatable); overrides `interfaces` in the file.
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
        /// How to print events.
        #[arg(long, value_enum, default_value_t = EventFormat::Text)]
        events: EventFormat,
        /// XDP attach mode: native (in the driver), generic (any interface), or auto.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file: exit 0 when valid, else non-zero with the reason.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
    /// Send a knock sequence to HOST: a rule's from a config file (a rotating
    /// rule's for the current window), or the steps given; or, with --spa,
    /// one SPA packet in fwknop's format.
    Knock {
        /// Address or name of the server.
        host: String,
        /// Steps such as tcp:3721 udp:4728 tcp:6742 (instead of --config/--rule).
        #[arg(value_name = "STEP", conflicts_with_all = ["config", "rule", "spa"])]
        steps: Vec<PortSpec>,
        /// Configuration file holding the rule or SPA entry.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Name of the rule whose sequence to send.
        #[arg(long, requires = "config", conflicts_with = "spa")]
        rule: Option<String>,
        /// Name of the `[[spa]]` entry whose keys sign and encrypt one SPA
        /// packet asking for all its protected ports (what the fwknop
        /// client sends; fwknopd accepts it too).
        #[arg(long, requires = "config")]
        spa: Option<String>,
        /// With --spa: the address to admit (fwknop's -a); without it the
        /// server admits the address the packet comes from (fwknop's -s).
        #[arg(long, requires = "spa", value_name = "ADDR")]
        allow_ip: Option<IpAddr>,
        /// Pause between knocks, such as 20ms or 1s.
        #[arg(long, default_value = "20ms", value_parser = parse_delay)]
        delay: Duration,
    },
    /// Show the running filter: interfaces, rules, live grants, flows, map
    /// occupancy and counters (whether or not `xknock run` is alive).
    Status {
        /// The configuration file (its `pin_dir` locates the filter).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Exit non-zero when the filter runs on no interface, or an
        /// interface it was attached to is gone (for monitoring).
        #[arg(long)]
        check: bool,
    },
    /// Admit ADDR to a rule's protected ports, as a completed knock would.
    Grant {
        /// The source address to admit, or ADDR/LEN: the prefix of that
        /// length (LEN must be the rule's grant_scope for the family).
        #[arg(value_name = "ADDR[/LEN]", value_parser = parse_target)]
        addr: IpNet,
        /// The configuration file (its `pin_dir` locates the filter).
        #[arg(long)]
        config: PathBuf,
        /// The rule whose ports to open.
        #[arg(long)]
        rule: String,
        /// How long, such as 60s or 2h (default: the rule's open_for).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_delay)]
        duration: Option<Duration>,
    },
    /// Withdraw ADDR's grants (connections already admitted live on unless --flows).
    Revoke {
        /// The source address (every grant that admits it), or ADDR/LEN
        /// (every grant inside that prefix or holding it).
        #[arg(value_name = "ADDR[/LEN]", value_parser = parse_target)]
        addr: IpNet,
        /// The configuration file (its `pin_dir` locates the filter).
        #[arg(long)]
        config: PathBuf,
        /// Only this rule's grant.
        #[arg(long)]
        rule: Option<String>,
        /// Also end the connections the grants admitted.
        #[arg(long)]
        flows: bool,
    },
    /// Print every decision the kernel makes about ADDR (framing, port roles,
    /// state found, verdict) until Ctrl-C, from a traced copy of the filter
    /// swapped in for the trace; the filter's own program carries no trace code.
    Trace {
        /// The source address to trace.
        addr: IpAddr,
        /// The configuration file (its `pin_dir` locates the filter).
        #[arg(long)]
        config: PathBuf,
        /// End the trace after this long, such as 30s.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_delay)]
        duration: Option<Duration>,
    },
    /// Convert a knockd configuration into an xknock one on stdout; what
    /// cannot be carried over is a warning on stderr, naming its line.
    ImportKnockd {
        /// knockd's configuration file, such as /etc/knockd.conf.
        knockd_conf: PathBuf,
    },
    /// Convert fwknopd's access.conf into `[[spa]]` entries on stdout, with
    /// the SPA port and packet age of fwknopd.conf (by default the one
    /// beside access.conf); what cannot be carried over is a warning on
    /// stderr, naming its line.
    ImportFwknop {
        /// fwknopd's access stanzas, such as /etc/fwknop/access.conf.
        access_conf: PathBuf,
        /// fwknopd's own configuration (default: fwknopd.conf beside
        /// ACCESS_CONF, if there is one).
        #[arg(long)]
        fwknopd_conf: Option<PathBuf>,
    },
    /// Print a new secret for a rotating rule (256 random bits, base64):
    /// `xknock keygen > ssh.key`, then `chmod 600 ssh.key` and copy it to
    /// the clients with the configuration.
    Keygen,
    /// Take the filter off every interface and remove its pins: the only way
    /// it comes off. Stop `xknock run` first.
    Detach {
        /// The configuration file (its `pin_dir` locates the filter).
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn parse_delay(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

/// An address (its /32 or /128) or a prefix, `ADDR/LEN`, for `grant` and
/// `revoke`; host bits below the length are cleared.
pub fn parse_target(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("`{s}` is not an address or ADDR/LEN prefix"))
}

/// The systemd unit, kept in the repository as operators read it.
pub const SYSTEMD_UNIT: &str = include_str!("../../dist/xknock.service");

/// Writes what an installation needs besides the binary, generated from
/// the definitions above so they never drift from the real command line:
/// `man/xknock.1` and a page per subcommand, `completions/` for bash, zsh
/// and fish, and `xknock.service`.
pub fn write_assets(out: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [out, &man, &completions] {
        std::fs::create_dir_all(dir)?;
    }
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command.clone(), "xknock", &completions)?;
    }
    std::fs::write(out.join("xknock.service"), SYSTEMD_UNIT)
}

/// The library's messages (through `log`) as the lines `xknock` prints on
/// stderr: `xknock: MESSAGE`, with `error: ` or `warning: ` before the
/// message at those levels. Only xknock's own records: the aya crates log
/// their internals through the same facade.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info && metadata.target().starts_with("xknock")
    }

    #[expect(
        clippy::print_stderr,
        reason = "this logger is where the library's `log` messages reach stderr"
    )]
    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        eprintln!("xknock: {level}{}", record.args());
    }

    fn flush(&self) {}
}

/// Sends the library's messages to stderr; call once, first thing.
pub fn log_to_stderr() {
    static STDERR: Stderr = Stderr;
    if log::set_logger(&STDERR).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_cover_every_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_assets(dir.path()).expect("write assets");
        let page = std::fs::read_to_string(dir.path().join("man/xknock.1")).expect("xknock.1");
        let bash = std::fs::read_to_string(dir.path().join("completions/xknock.bash"))
            .expect("bash completions");
        for sub in [
            "run",
            "check-config",
            "knock",
            "status",
            "grant",
            "revoke",
            "trace",
            "import-knockd",
            "detach",
        ] {
            // roff escapes hyphens.
            let in_roff = format!("xknock\\-{}(1)", sub.replace('-', "\\-"));
            assert!(page.contains(&in_roff), "xknock.1 lacks {in_roff}");
            assert!(
                dir.path().join(format!("man/xknock-{sub}.1")).is_file(),
                "no page for {sub}"
            );
            assert!(bash.contains(sub), "bash completions lack {sub}");
        }
        assert!(bash.contains("--metrics"));
        assert!(dir.path().join("completions/_xknock").is_file());
        assert!(dir.path().join("completions/xknock.fish").is_file());
        let unit = std::fs::read_to_string(dir.path().join("xknock.service")).expect("unit");
        assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    }
}
