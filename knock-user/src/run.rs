//! `xknock run`: put the filter in place (or take over the pinned one),
//! stream its events, sweep expired state, reload on SIGHUP. However it
//! ends, the filter stays attached and enforcing.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    config::{
        Config,
        one_time::{self, OneTime},
    },
    events::{EventFormat, Record, RuleBook},
    filter::{
        AttachMode, Filter, FilterError, Installed, check_interface, embedded_program,
        monotonic_ns, read_instance,
    },
    metrics::{self, Reloads},
    pins::{Lock, PinDir},
    status::nonzero,
};

/// What `xknock run` was asked to do.
pub struct RunOptions {
    pub config: PathBuf,
    /// Interfaces from the command line; empty: the file's.
    pub ifaces: Vec<String>,
    pub format: EventFormat,
    pub mode: AttachMode,
    pub metrics: Option<SocketAddr>,
}

/// Reads and validates a configuration file, printing its warnings.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = read_config(path)?;
    for warning in &config.warnings {
        eprintln!("xknock: warning: {}: {warning}", path.display());
    }
    Ok(config)
}

/// Reads and validates a configuration file, leaving its warnings to the
/// commands that apply it.
pub fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Config::parse_in(&text, dir).with_context(|| format!("{} is not valid", path.display()))
}

/// The filter this process put in place, and what it was made from.
struct Running {
    filter: Filter,
    config: Config,
    rules: RuleBook,
    ifaces: Vec<String>,
}

/// Loads `config` as the filter's next generation and puts it on every
/// interface (`ifaces`, and any other the filter is pinned on), then makes
/// it official. On an error the filter that was running keeps running.
fn apply(
    config: Config,
    ifaces: &[String],
    mode: AttachMode,
    pins: &PinDir,
    lock: &Lock,
) -> anyhow::Result<Running> {
    for iface in ifaces {
        check_interface(iface)?;
    }
    let mut filter = Filter::load_pinned(&config, pins, lock)?;
    let mut all = ifaces.to_vec();
    for pinned in pins.links()? {
        if !all.contains(&pinned.iface) {
            eprintln!(
                "xknock: `{}` is not in this configuration, but the filter is pinned on it: it gets the new program too (`xknock detach` takes the filter off every interface)",
                pinned.iface
            );
            all.push(pinned.iface);
        }
    }
    for iface in &all {
        match filter.install(pins, iface, mode)? {
            Installed::Attached(used) => eprintln!("xknock: attached to {iface} ({used} mode)"),
            Installed::Replaced(kept) => eprintln!(
                "xknock: attached to {iface} ({kept} mode, replacing the program on its pinned link; state kept)"
            ),
        }
    }
    filter.commit(pins)?;
    let rules = RuleBook::new(&config, filter.slots());
    Ok(Running {
        filter,
        config,
        rules,
        ifaces: all,
    })
}

pub fn run(options: RunOptions) -> anyhow::Result<()> {
    // Before anything is touched.
    if embedded_program().is_none() {
        return Err(FilterError::NoProgram.into());
    }
    let config = load_config(&options.config)?;
    let (ifaces, source) = if options.ifaces.is_empty() {
        (config.interfaces.clone(), "interfaces")
    } else {
        (options.ifaces.clone(), "--iface")
    };
    if ifaces.is_empty() {
        bail!(
            "no interface to filter: set `interfaces` in {} or pass --iface",
            options.config.display()
        );
    }
    for iface in &ifaces {
        check_interface(iface).context(source)?;
    }
    let pins = PinDir::new(&config.pin_dir);
    let fresh = read_instance(&pins).ok().flatten().is_none();
    // Held until this process ends: one `run` per filter.
    let _owner = pins.own()?;
    let change = pins.change(CHANGE_PATIENCE)?;
    let applied = apply(config, &ifaces, options.mode, &pins, &change);
    drop(change);
    let mut running = match applied {
        Ok(running) => running,
        Err(error) => {
            // A first run that failed leaves nothing behind; a filter that
            // was running stays as it was.
            if fresh && pins.links().is_ok_and(|links| links.is_empty()) {
                let _ = pins.remove();
            }
            return Err(error);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let streamed = runtime.block_on(serve(&mut running, &options, &ifaces, &pins));
    let maps = running.filter.maps();
    eprintln!("xknock: verdicts: {}", nonzero(&maps.counters()?));
    eprintln!("xknock: answers: {}", nonzero(&maps.answers()?));
    eprintln!(
        "xknock: stopped; the filter stays on {} and keeps enforcing (`xknock detach --config {}` takes it off)",
        running.ifaces.join(", "),
        options.config.display()
    );
    streamed
}

/// How long a load waits for another change (a trace swapping programs) to end.
pub const CHANGE_PATIENCE: Duration = Duration::from_secs(10);

/// Events printed before the loop looks at signals and the sweeper again.
const EVENTS_PER_TURN: usize = 1024;

/// How often expired grants and idle flows are swept out of the maps.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

async fn serve(
    running: &mut Running,
    options: &RunOptions,
    ifaces: &[String],
    pins: &PinDir,
) -> anyhow::Result<()> {
    let ring = running.filter.maps_mut().take_events()?;
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, for as
    // long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .with_context(|| format!("polling the event ring buffer (fd {fd})"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let reloads = Arc::new(Reloads::default());
    if let Some(addr) = options.metrics {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("--metrics {addr}"))?;
        eprintln!(
            "xknock: metrics at http://{}/metrics",
            listener.local_addr()?
        );
        metrics::spawn(listener, pins.clone(), reloads.clone())?;
    }
    let mut spent: Vec<OneTime> = Vec::new();
    // A closed stdout (say `xknock run | head`) ends the run cleanly.
    let print = |record: Record| -> anyhow::Result<()> {
        writeln!(
            std::io::stdout().lock(),
            "{}",
            record.render(options.format)
        )
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
                    match Record::from_kernel(&item, &running.rules) {
                        Ok(record) => {
                            if record.event == "grant" {
                                spent.extend(one_time_source(&running.config, record.rule.as_deref()));
                            }
                            print(record)?;
                        }
                        Err(error) => eprintln!("xknock: skipping an event: {error}"),
                    }
                    drained += 1;
                }
                if drained < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
                // A one-time sequence that opened is marked used, and the
                // next one put in place (the kernel already refuses it again).
                if !spent.is_empty() {
                    for used in spent.drain(..) {
                        if let Err(error) = one_time::mark_used(&used.path, used.line) {
                            eprintln!(
                                "xknock: error: marking line {} of {} used: {error}",
                                used.line,
                                used.path.display()
                            );
                        }
                    }
                    let result = reload(running, options, ifaces, pins);
                    reloads.record(result.is_ok());
                    match result {
                        Ok(()) => eprintln!("xknock: next one-time sequence in place"),
                        Err(error) => eprintln!(
                            "xknock: error: putting the next one-time sequence in place failed, the used one stays refused: {error:#}"
                        ),
                    }
                }
            }
            _ = sweep.tick() => {
                for grant in running.filter.maps_mut().sweep(monotonic_ns())? {
                    print(Record::expired(&grant, &running.rules))?;
                }
            }
            _ = sighup.recv() => {
                let result = reload(running, options, ifaces, pins);
                reloads.record(result.is_ok());
                match result {
                    Ok(()) => eprintln!(
                        "xknock: reloaded {}: {} rule(s)",
                        options.config.display(),
                        running.config.rules.len()
                    ),
                    Err(error) => eprintln!(
                        "xknock: error: reload refused, the filter is unchanged: {error:#}"
                    ),
                }
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// The one-time sequence the rule `name` opened with, if it has one.
fn one_time_source(config: &Config, name: Option<&str>) -> Option<OneTime> {
    let rule = config
        .rules
        .iter()
        .find(|r| Some(r.name.as_str()) == name)?;
    rule.once.clone().filter(|once| once.line > 0)
}

/// Re-reads the configuration and, if it is valid and fits the running
/// filter, puts it in place; otherwise nothing changes.
fn reload(
    running: &mut Running,
    options: &RunOptions,
    ifaces: &[String],
    pins: &PinDir,
) -> anyhow::Result<()> {
    let config = load_config(&options.config)?;
    let ifaces = if options.ifaces.is_empty() {
        config.interfaces.clone()
    } else {
        ifaces.to_vec()
    };
    if ifaces.is_empty() {
        bail!("no interface to filter: the file sets no `interfaces`");
    }
    if config.pin_dir != running.config.pin_dir {
        bail!(
            "pin_dir changed from {} to {}: a running filter cannot move; restart xknock for that",
            running.config.pin_dir.display(),
            config.pin_dir.display()
        );
    }
    let change = pins.change(CHANGE_PATIENCE)?;
    let next = apply(config, &ifaces, options.mode, pins, &change)?;
    // The old generation's programs are unloaded as it drops; the links
    // already run the new one.
    *running = next;
    Ok(())
}
