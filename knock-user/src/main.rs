//! `xknock`: a port-knocking firewall that filters at XDP.

use std::{
    fs, io::Write as _, os::fd::AsRawFd as _, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use xknock::{
    config::{Config, KernelConfig, PortSpec},
    events::{EventFormat, Record},
    filter::{AttachMode, Filter, check_interface, embedded_program},
    knock,
};

/// Port knocking at XDP: protected ports stay invisible until a source sends
/// the right knock sequence.
#[derive(Parser)]
#[command(name = "xknock", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the filter to interfaces and stream its events until SIGINT or SIGTERM.
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
    },
    /// Validate a configuration file: exit 0 when valid, else non-zero with the reason.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
    /// Send a knock sequence to HOST: a rule's from a config file, or the steps given.
    Knock {
        /// Address or name of the server.
        host: String,
        /// Steps such as tcp:3721 udp:4728 tcp:6742 (instead of --config/--rule).
        #[arg(value_name = "STEP", conflicts_with_all = ["config", "rule"])]
        steps: Vec<PortSpec>,
        /// Configuration file holding the rule.
        #[arg(long, requires = "rule")]
        config: Option<PathBuf>,
        /// Name of the rule whose sequence to send.
        #[arg(long, requires = "config")]
        rule: Option<String>,
        /// Pause between knocks, such as 20ms or 1s.
        #[arg(long, default_value = "20ms", value_parser = parse_delay)]
        delay: Duration,
    },
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

fn load_config(path: &PathBuf) -> anyhow::Result<Config> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config =
        Config::parse(&text).with_context(|| format!("{} is not valid", path.display()))?;
    for warning in &config.warnings {
        eprintln!("xknock: warning: {}: {warning}", path.display());
    }
    Ok(config)
}

/// `xknock --version`: the version, and whether this binary carries its XDP
/// program (a build made for checks only does not).
fn version() -> String {
    let program = match embedded_program() {
        Some(bytes) => format!("embedded ({bytes} bytes, BPF ELF)"),
        None => "none: built with XKNOCK_WITHOUT_EBPF=1 for checks only, it cannot filter".into(),
    };
    format!("{}\nXDP program: {program}", env!("CARGO_PKG_VERSION"))
}

fn main() -> ExitCode {
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Run {
            config,
            ifaces,
            events,
            mode,
        } => run(&config, ifaces, events, mode),
        Command::CheckConfig { config } => load_config(&config).and_then(|config| {
            KernelConfig::try_from(&config)?;
            println!("ok: {} rule(s)", config.rules.len());
            Ok(())
        }),
        Command::Knock {
            host,
            steps,
            config,
            rule,
            delay,
        } => send_knock(&host, steps, config, rule, delay),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xknock: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn send_knock(
    host: &str,
    steps: Vec<PortSpec>,
    config: Option<PathBuf>,
    rule: Option<String>,
    delay: Duration,
) -> anyhow::Result<()> {
    let steps = match (config, rule) {
        (Some(path), Some(name)) => {
            let config = load_config(&path)?;
            config
                .rules
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| r.sequence)
                .ok_or_else(|| anyhow!("{} has no rule named `{name}`", path.display()))?
        }
        _ if steps.is_empty() => {
            bail!("give the steps (tcp:PORT udp:PORT ...) or --config and --rule")
        }
        _ => steps,
    };
    let target = knock::resolve(host).with_context(|| format!("cannot resolve `{host}`"))?;
    knock::send_sequence(target, &steps, delay).with_context(|| format!("knocking on {target}"))?;
    let steps: Vec<String> = steps.iter().map(ToString::to_string).collect();
    eprintln!("xknock: knocked on {target}: {}", steps.join(" "));
    Ok(())
}

fn run(
    path: &PathBuf,
    ifaces: Vec<String>,
    format: EventFormat,
    mode: AttachMode,
) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let (ifaces, source) = if ifaces.is_empty() {
        (config.interfaces.clone(), "interfaces")
    } else {
        (ifaces, "--iface")
    };
    if ifaces.is_empty() {
        bail!(
            "no interface to filter: set `interfaces` in {} or pass --iface",
            path.display()
        );
    }
    for iface in &ifaces {
        check_interface(iface).context(source)?;
    }
    let kernel = KernelConfig::try_from(&config)?;
    // Maps are filled before the program is attached anywhere.
    let mut filter = Filter::load(&kernel)?;
    for iface in &ifaces {
        let used = filter.attach(iface, mode)?;
        eprintln!("xknock: attached to {iface} ({used} mode)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let streamed = runtime.block_on(stream_events(&mut filter, &config, &kernel, format));
    let counters = filter.counters()?;
    let answers = filter.answers()?;
    drop(filter);
    eprintln!("xknock: detached from {}", ifaces.join(", "));
    let counted = |counts: &std::collections::BTreeMap<&str, u64>| -> String {
        let counted: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        counted.join(" ")
    };
    eprintln!("xknock: verdicts: {}", counted(&counters));
    eprintln!("xknock: answers: {}", counted(&answers));
    streamed
}

/// Events printed before the loop looks at signals and the sweeper again.
const EVENTS_PER_TURN: usize = 1024;

/// How often expired grants and idle flows are swept out of the maps.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

async fn stream_events(
    filter: &mut Filter,
    config: &Config,
    kernel: &KernelConfig,
    format: EventFormat,
) -> anyhow::Result<()> {
    let ring = filter.take_events()?;
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, for as
    // long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .with_context(|| format!("polling the event ring buffer (fd {fd})"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    // A closed stdout (say `xknock run | head`) ends the run cleanly: the
    // caller then detaches.
    let print = |record: Record| -> anyhow::Result<()> {
        writeln!(std::io::stdout().lock(), "{}", record.render(format))
            .context("writing events to stdout")
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                let ring = guard.get_inner_mut();
                // Bounded, so a ring that never empties under a flood still
                // lets signals and the sweeper take their turn.
                let mut drained = 0;
                while drained < EVENTS_PER_TURN {
                    let Some(item) = ring.next() else { break };
                    match Record::from_kernel(&item, config) {
                        Ok(record) => print(record)?,
                        Err(error) => eprintln!("xknock: skipping an event: {error}"),
                    }
                    drained += 1;
                }
                if drained < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
            }
            _ = sweep.tick() => {
                for grant in filter.sweep(kernel)? {
                    print(Record::expired(&grant, config))?;
                }
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}
