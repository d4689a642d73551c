//! `xknock run`: put the filter in place (or take over the pinned one),
//! stream its events, sweep expired state, reload on SIGHUP. However it
//! ends, the filter stays attached and enforcing.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use ipnet::IpNet;
use knock_common::{Event, EventBudget, SpaDatagram};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    admin::status::nonzero,
    config::{Config, load_config, one_time::OneTime},
    daemon::events::{EventFormat, Record, RecordKind},
    daemon::fleet::{Following, Target, Via},
    daemon::generations::{
        Asked, CHANGE_PATIENCE, Loads, Purpose, Running, apply, loaded, put_in_place, rotate,
        rotation_loaded, rotation_step_at,
    },
    daemon::listeners::warn_of_served_ports,
    daemon::metrics::{self, Reloads},
    daemon::spa::{self, Verdict},
    loader::pins::PinDir,
    loader::{
        AttachMode, FilterError, check_interface, embedded_program, grant_from_now, monotonic_ns,
        read_instance,
    },
    loader::{
        grant_prefix,
        maps::{display_addr, key_addr},
    },
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

pub fn run(options: RunOptions) -> anyhow::Result<()> {
    // Before anything is touched.
    if embedded_program().is_none() {
        return Err(FilterError::NoProgram.into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let signals = {
        let _context = runtime.enter();
        Signals::register()?
    };
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
    warn_of_served_ports(&config);
    let change = pins.change(CHANGE_PATIENCE)?;
    let applied = apply(config, &ifaces, options.mode, &pins, change, Duration::ZERO);
    let mut running = match applied {
        Ok(running) => running,
        Err(error) => {
            // A first run that failed leaves nothing behind; a filter that
            // was running stays as it was.
            if fresh && pins.links().is_ok_and(|links| links.is_empty()) {
                drop(pins.remove());
            }
            return Err(error);
        }
    };
    let streamed = runtime.block_on(serve(&mut running, signals, &options, &pins));
    let maps = running.filter.maps();
    log::info!("verdicts: {}", nonzero(&maps.counters()?));
    log::info!("answers: {}", nonzero(&maps.answers()?));
    log::info!(
        "stopped; the filter stays on {} and keeps enforcing (`xknock detach --config {}` takes it off)",
        running.ifaces.join(", "),
        options.config.display()
    );
    streamed
}

/// Events printed before the loop looks at signals and the sweeper again.
const EVENTS_PER_TURN: usize = 1024;

/// One-time lines marked used in a row because the fleet spent them.
const MAX_LINES_SKIPPED: usize = 64;

/// How long a one-time line the fleet spent waits before the next one is
/// put in place (a reload, with the verifier): the grant the winner
/// publishes right after its spend is planted first, not after the
/// reload. The kernel refuses the spent line meanwhile.
const FLEET_LINES_SETTLE: Duration = Duration::from_millis(250);

/// How often expired grants and idle flows are swept out of the maps.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The signals `run` answers. They are registered before anything is
/// attached: one that arrives while the filter loads waits for the event
/// loop (a SIGINT or SIGTERM then stops `run` as usual, a SIGHUP reloads),
/// instead of ending the process by its default action.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Registers them; needs the event loop's context.
    fn register() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }
}

async fn serve(
    running: &mut Running,
    mut signals: Signals,
    options: &RunOptions,
    pins: &PinDir,
) -> anyhow::Result<()> {
    let mut ring = poll_ring(running.filter.maps_mut().take_events()?, "event")?;
    let mut datagrams = poll_ring(running.filter.maps_mut().take_spa_datagrams()?, "SPA")?;
    let mut refusals = RefusalBudget::default();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut following = Following::start(&running.config);
    let reloads = Arc::new(Reloads::default());
    reloads.follow(&running.config);
    if let Some(addr) = options.metrics {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("--metrics {addr}"))?;
        log::info!("metrics at http://{}/metrics", listener.local_addr()?);
        let fleet = following.as_ref().map(Following::status);
        metrics::spawn(listener, pins.clone(), Arc::clone(&reloads), fleet)?;
    }
    // A one-time line the kernel spent while no run could mark it (one
    // killed between the grant and the mark) is marked now, as its grant
    // would have had it: else the spent line stays in place, refused, and
    // the next one, which clients send, opens nothing.
    let mut loads = Loads::default();
    let mut spent = spent_one_time(running)?;
    loads.one_time_used(&mut spent, false);
    let mut last_prune = Instant::now();
    // When lines the fleet spent are put behind us (`FLEET_LINES_SETTLE`).
    let mut lines_due: Option<tokio::time::Instant> = None;
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
        // What was asked while a load ran is loaded next, as one reload.
        if let Some(Err((asked, error))) =
            loads.start_asked(running, &options.config, &options.ifaces, pins)
        {
            report_reload(
                asked,
                Err(&error),
                running,
                options,
                &reloads,
                following.as_ref(),
            );
        }
        // Rotation waits for a load that runs (a reload takes the lead
        // into account itself).
        let rotation_step = if loads.busy() {
            None
        } else {
            rotation_step_at(running)
        };
        let rotation = async move {
            match rotation_step {
                Some(at) => {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending().await,
            }
        };
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
                        Ok(record) if record.event == RecordKind::Held => {
                            // A sequence the fleet spends: it opens (a `grant`
                            // line) once the fleet has recorded it.
                            if let (Some(following), Some(event)) = (&mut following, Event::decode(&item)) {
                                following.hold_sequence(record, &event, running.filter.maps(), &running.config)?;
                            }
                        }
                        Ok(record) => {
                            if record.event == RecordKind::Grant {
                                spent.extend(one_time_source(&running.config, record.rule.as_deref()));
                                if let (Some(following), Some(event), Some(source), Some(rule)) =
                                    (&following, Event::decode(&item), record.source, &record.rule)
                                {
                                    // Made moments ago, when the last step came.
                                    let grant = knock_common::Grant {
                                        expires_ns: event.expires_ns,
                                        granted_ns: monotonic_ns(),
                                    };
                                    let granted = record
                                        .granted
                                        .unwrap_or_else(|| IpNet::from(source));
                                    following.granted(granted, rule, grant, Via::Knock);
                                }
                            }
                            print(record)?;
                        }
                        Err(error) => log::info!("skipping an event: {error}"),
                    }
                    drained += 1;
                }
                if drained < EVENTS_PER_TURN {
                    guard.clear_ready();
                }
                // A one-time sequence that opened is marked used, and the
                // next one put in place (the kernel already refuses it again).
                loads.one_time_used(&mut spent, false);
            }
            guard = datagrams.readable_mut() => {
                let mut guard = guard.context("waiting for SPA datagrams")?;
                let ring = guard.get_inner_mut();
                let mut drained = 0;
                while drained < DATAGRAMS_PER_TURN {
                    let Some(item) = ring.next() else { break };
                    drained += 1;
                    let Some((source, port, payload)) = SpaDatagram::decode(&item) else {
                        log::info!("skipping an SPA record of {} bytes", item.len());
                        continue;
                    };
                    let record = match admit_spa(running, following.as_mut(), &source, port, payload) {
                        Ok(Some(record)) => record,
                        // Waits for the fleet to record it spent.
                        Ok(None) => continue,
                        Err(error) => {
                            log::error!("an SPA packet from {} could not be handled, nothing was granted: {error:#}", display_addr(&source));
                            continue;
                        }
                    };
                    if record.event == RecordKind::SpaGrant || refusals.admit() {
                        print(record)?;
                    }
                }
                if drained < DATAGRAMS_PER_TURN {
                    guard.clear_ready();
                }
            }
            _ = sweep.tick() => {
                for grant in running.filter.maps_mut().sweep(monotonic_ns())? {
                    print(Record::expired(&grant, &running.rules))?;
                }
                if let Some(following) = &following {
                    following.sweep(running.filter.maps(), &running.rules)?;
                }
                if let Some(hidden) = refusals.hidden_in_last_window() {
                    log::info!("{hidden} more SPA packet(s) refused in the last second, not shown one by one");
                }
                if last_prune.elapsed() >= REPLAY_PRUNE_INTERVAL {
                    last_prune = Instant::now();
                    spa::forget_aged(running.filter.maps_mut(), SystemTime::now())?;
                }
                // The wall clock may have jumped.
                if !loads.busy() && rotation_step_at(running).is_some_and(|at| at <= SystemTime::now()) {
                    loads.loading = rotate(running, options.mode, pins);
                }
            }
            Some(message) = next_from_fleet(&mut following) => {
                if let Some(following) = &mut following {
                    let slots = running.filter.slots().to_vec();
                    let target = Target {
                        maps: running.filter.maps_mut(),
                        config: &running.config,
                        slots: &slots,
                    };
                    let applied = following.apply(message, target)?;
                    for record in applied.records {
                        print(record)?;
                    }
                    spent.extend(one_time_source(&running.config, applied.one_time.as_deref()));
                    if !spent.is_empty() && lines_due.is_none() {
                        lines_due = Some(tokio::time::Instant::now() + FLEET_LINES_SETTLE);
                    }
                }
            }
            () = until(lines_due) => {
                lines_due = None;
                // The fleet may have spent the next line too (its records
                // arrive in key order, not line order): after the reload,
                // on until a line in place is unspent, a bounded number
                // of times.
                loads.lines_left = MAX_LINES_SKIPPED;
                loads.one_time_used(&mut spent, true);
            }
            () = rotation => loads.loading = rotate(running, options.mode, pins),
            _ = signals.hangup.recv() => loads.asked.hangup = true,
            (purpose, result) = loaded(&mut loads.loading) => {
                loads.loading = None;
                match purpose {
                    Purpose::Rotation => rotation_loaded(running, result),
                    Purpose::Reload(asked) => {
                        let result = result.and_then(|prepared| {
                            *running = put_in_place(prepared, options.mode, pins, false)?;
                            Ok(())
                        });
                        report_reload(asked, result.as_ref().map(|_| ()), running, options, &reloads, following.as_ref());
                        if result.is_ok() && asked.fleet_lines && loads.lines_left > 0 {
                            loads.lines_left -= 1;
                            spent.extend(spent_one_time(running)?);
                            loads.one_time_used(&mut spent, true);
                        }
                    }
                }
            }
            _ = signals.interrupt.recv() => return Ok(()),
            _ = signals.terminate.recv() => return Ok(()),
        }
    }
}

/// The fleet session's next message; never, without a fleet.
/// Waits until `due`, or for ever.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_from_fleet(following: &mut Option<Following>) -> Option<crate::fleet::FromFleet> {
    match following {
        Some(following) => following.next().await,
        None => std::future::pending().await,
    }
}

/// Registers a ring buffer with the event loop.
fn poll_ring(ring: RingBuf<MapData>, what: &str) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, for as
    // long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .with_context(|| format!("polling the {what} ring buffer (fd {fd})"))
}

/// SPA datagrams judged before the loop looks at signals and the sweeper
/// again.
const DATAGRAMS_PER_TURN: usize = 256;

/// How often SPA packets older than their `max_age` are forgotten.
const REPLAY_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Judges one SPA datagram and puts a grant in place as `xknock grant`
/// does; the record says what happened. In a fleet, one that checks out
/// waits for the fleet to record it spent (no record yet).
fn admit_spa(
    running: &mut Running,
    following: Option<&mut Following>,
    source: &knock_common::Addr,
    port: u16,
    payload: &[u8],
) -> anyhow::Result<Option<Record>> {
    let maps = running.filter.maps_mut();
    let verdict = running
        .judge
        .judge(source, port, payload, SystemTime::now(), maps)?;
    match (verdict, following) {
        (Verdict::Grant(grant), Some(following)) => {
            following.hold_spa(grant, *source, port, payload, &running.config);
            Ok(None)
        }
        (verdict, _) => {
            let mut granted = None;
            if let Verdict::Grant(grant) = &verdict {
                let key = maps.grant(
                    &key_addr(grant.addr),
                    grant.index,
                    grant_from_now(grant.open_for),
                )?;
                granted = (key.host_bits() > 0).then(|| grant_prefix(&key));
            }
            let mut record = Record::spa(&verdict, source, port);
            record.granted = granted;
            Ok(Some(record))
        }
    }
}

/// Refused SPA packets shown per second: a flood of junk at an SPA port is
/// counted (the kernel's `drop_spa_*` verdicts), not printed line by line.
const REFUSALS_SHOWN_PER_SECOND: u32 = 10;

/// Refusals shown per second, counted as the kernel counts its flood
/// events (`EventBudget`), and those not shown.
#[derive(Default)]
struct RefusalBudget {
    budget: EventBudget,
    hidden: u64,
}

impl RefusalBudget {
    /// Whether one more refusal may be shown now.
    fn admit(&mut self) -> bool {
        let shown = self.budget.admit(REFUSALS_SHOWN_PER_SECOND, monotonic_ns);
        self.hidden += u64::from(!shown);
        shown
    }

    /// Refusals not shown, once their second is over.
    fn hidden_in_last_window(&mut self) -> Option<u64> {
        let over = monotonic_ns().saturating_sub(self.budget.window_start_ns) >= 1_000_000_000;
        (over && self.hidden > 0).then(|| std::mem::take(&mut self.hidden))
    }
}

/// Says how a reload ended, in the log and the metrics, for each of what
/// asked for it.
fn report_reload(
    asked: Asked,
    result: Result<(), &anyhow::Error>,
    running: &Running,
    options: &RunOptions,
    reloads: &Reloads,
    following: Option<&Following>,
) {
    reloads.record(result.is_ok());
    reloads.follow(&running.config);
    match result {
        Ok(()) => {
            if asked.hangup {
                log::info!(
                    "reloaded {}: {} rule(s)",
                    options.config.display(),
                    running.config.rules.len()
                );
                if let Some(following) = following {
                    following.reconfigured(&running.config);
                }
            }
            if asked.one_time || asked.fleet_lines {
                log::info!("next one-time sequence in place");
            }
        }
        Err(error) => {
            if asked.hangup {
                log::error!("reload refused, the filter is unchanged: {error:#}");
            }
            if asked.one_time || asked.fleet_lines {
                log::error!(
                    "putting the next one-time sequence in place failed, the used one stays refused: {error:#}"
                );
            }
        }
    }
}

/// The one-time lines in place whose sequence the kernel has already
/// spent (its `SPENT` record holds their rule index and sequence tag).
fn spent_one_time(running: &Running) -> anyhow::Result<Vec<OneTime>> {
    let maps = running.filter.maps();
    let rules = maps.rules()?;
    Ok(maps
        .spent()?
        .into_iter()
        .filter(|(key, _)| {
            rules
                .get(key.rule as usize)
                .is_some_and(|rule| rule.steps > 0 && rule.sequence_tag == key.sequence_tag)
        })
        .filter_map(|(key, _)| {
            let (name, _) = running.rules.get(key.rule)?;
            one_time_source(&running.config, Some(name))
        })
        .collect())
}

/// The one-time sequence the rule `name` opened with, if it has one.
fn one_time_source(config: &Config, name: Option<&str>) -> Option<OneTime> {
    let rule = config
        .rules
        .iter()
        .find(|r| Some(r.name.as_str()) == name)?;
    rule.one_time().filter(|once| once.line > 0).cloned()
}
