//! The filter's generations under `xknock run`: the one in place
//! (`Running`), a load on a thread of its own (`Loads`: a reload, a
//! one-time line used, or the next rotating window's generation, loaded
//! ahead of it and put in place when it begins).

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;

use crate::{
    config::{
        Config, load_config,
        one_time::{self, OneTime},
    },
    daemon::events::RuleBook,
    daemon::listeners::warn_of_served_ports,
    daemon::spa::Judge,
    loader::pins::{Lock, PinDir},
    loader::{AttachMode, Filter, Installed, check_interface},
};

/// The filter this process put in place, and what it was made from.
pub struct Running {
    pub filter: Filter,
    pub config: Config,
    pub rules: RuleBook,
    pub ifaces: Vec<String>,
    /// When a rotating sequence it holds is next replaced.
    pub next_rotation: Option<SystemTime>,
    /// The generation with the next window's sequences, loaded ahead of
    /// it (verification takes a good part of a second) and put in place
    /// when the window begins.
    pub next_generation: Option<Prepared>,
    /// Judges the datagrams the filter hands over from SPA ports.
    pub judge: Judge,
    /// How long loading this generation took (mostly the verifier's
    /// work): sets how far ahead of a window the next loads begin.
    pub took: Duration,
}

/// A generation loaded but not yet in place, holding the change lock.
pub struct Prepared {
    filter: Filter,
    config: Config,
    /// Every interface it goes on.
    ifaces: Vec<String>,
    /// What its rotating sequences were made for.
    at: SystemTime,
    /// How long its load took.
    took: Duration,
    _change: Lock,
}

/// Loads `config` as the filter's next generation, with rotating
/// sequences as they are at `at`, for `ifaces` and any other interface the
/// filter is pinned on. Nothing the running filter uses changes.
fn prepare(
    config: Config,
    ifaces: &[String],
    pins: &PinDir,
    change: Lock,
    at: SystemTime,
) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    for iface in ifaces {
        check_interface(iface)?;
    }
    let filter = Filter::load_pinned(&config, pins, &change, at)?;
    let mut all = ifaces.to_vec();
    for pinned in pins.links()? {
        if !all.contains(&pinned.iface) {
            log::info!(
                "`{}` is not in this configuration, but the filter is pinned on it: it gets the new program too (`xknock detach` takes the filter off every interface)",
                pinned.iface
            );
            all.push(pinned.iface);
        }
    }
    Ok(Prepared {
        filter,
        config,
        ifaces: all,
        at,
        took: started.elapsed(),
        _change: change,
    })
}

/// Puts a prepared generation on every interface and makes it official;
/// says so for each interface unless `quiet`. On an error the filter that
/// was running keeps running.
pub fn put_in_place(
    prepared: Prepared,
    mode: AttachMode,
    pins: &PinDir,
    quiet: bool,
) -> anyhow::Result<Running> {
    let Prepared {
        mut filter,
        config,
        ifaces,
        at,
        took,
        _change,
    } = prepared;
    for iface in &ifaces {
        match filter.install(pins, iface, mode)? {
            _ if quiet => {}
            Installed::Attached(used) => log::info!("attached to {iface} ({used} mode)"),
            Installed::Replaced(kept) => log::info!(
                "attached to {iface} ({kept} mode, replacing the program on its pinned link; state kept)"
            ),
        }
    }
    filter.commit(pins)?;
    let rules = RuleBook::new(&config, filter.slots());
    let judge = Judge::new(&config, filter.slots());
    Ok(Running {
        judge,
        filter,
        next_rotation: config.next_rotation(at),
        next_generation: None,
        config,
        rules,
        ifaces,
        took,
    })
}

/// Loads `config` and puts it in place, holding the change lock `change`
/// throughout; `took` is how long the last load took (none at a start).
/// Its rotating sequences are those of a rotation's lead from now: a
/// generation holds a window's sequence and the one before, and a load (a
/// start, a reload, a one-time sequence used) that begins just before a
/// window and ends in it would otherwise put in place the sequences of the
/// window that just ended, and the new window's would wait for the next
/// rotation step (found by the soak: a client knocking early in the window
/// was refused).
pub fn apply(
    config: Config,
    ifaces: &[String],
    mode: AttachMode,
    pins: &PinDir,
    change: Lock,
    took: Duration,
) -> anyhow::Result<Running> {
    let at = SystemTime::now() + rotation_lead(&config, took).unwrap_or_default();
    let prepared = prepare(config, ifaces, pins, change, at)?;
    put_in_place(prepared, mode, pins, false)
}

/// How long a load waits for another change (a trace swapping programs) to end.
pub const CHANGE_PATIENCE: Duration = Duration::from_secs(10);

/// What asked for a reload; asks that come while a load runs are loaded
/// after it, as one reload of the file as it is then.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    /// A SIGHUP.
    pub hangup: bool,
    /// A one-time sequence used (its line is marked already).
    pub one_time: bool,
    /// One-time lines the fleet spent: the lines in place are looked at
    /// again after the reload, as the fleet may have spent them too.
    pub fleet_lines: bool,
}

impl Asked {
    fn any(self) -> bool {
        self.hangup || self.one_time || self.fleet_lines
    }
}

/// What a load of the filter is for.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// The configuration file read anew.
    Reload(Asked),
    /// The next rotating window's generation, put in place when it begins.
    Rotation,
}

/// A load of the filter on a thread of its own: the verifier's second of
/// work does not hold up SPA packets (a client that sends one and connects
/// right away would be refused), events or the sweeper.
pub struct Loading {
    purpose: Purpose,
    task: tokio::task::JoinHandle<anyhow::Result<Prepared>>,
}

/// `serve`'s loads: at most one at a time, and what was asked meanwhile.
#[derive(Default)]
pub struct Loads {
    pub loading: Option<Loading>,
    pub asked: Asked,
    /// How many more times in a row the fleet's spent lines may be skipped.
    pub lines_left: usize,
}

impl Loads {
    pub fn busy(&self) -> bool {
        self.loading.is_some()
    }

    /// Marks the one-time lines in `spent` used and asks for a reload to
    /// put the next ones in place (the kernel already refuses the used
    /// ones); `fleet` when the fleet spent them.
    pub fn one_time_used(&mut self, spent: &mut Vec<OneTime>, fleet: bool) {
        if spent.is_empty() {
            return;
        }
        for used in spent.drain(..) {
            if let Err(error) = one_time::mark_used(&used.path, used.line) {
                log::error!(
                    "marking line {} of {} used: {error}",
                    used.line,
                    used.path.display()
                );
            }
        }
        if fleet {
            self.asked.fleet_lines = true;
        } else {
            self.asked.one_time = true;
        }
    }

    /// Starts the reload asked for, unless a load runs or nothing was
    /// asked; an error is what was asked and why the file was refused
    /// before any load.
    pub fn start_asked(
        &mut self,
        running: &mut Running,
        path: &Path,
        cli_ifaces: &[String],
        pins: &PinDir,
    ) -> Option<Result<(), (Asked, anyhow::Error)>> {
        if self.busy() || !self.asked.any() {
            return None;
        }
        let asked = std::mem::take(&mut self.asked);
        Some(match start_reload(running, path, cli_ifaces, pins, asked) {
            Ok((loading, None)) => {
                self.loading = Some(loading);
                Ok(())
            }
            // The file was refused, the one-time lines move on anyway: the
            // SIGHUP, if one asked, is refused.
            Ok((loading, Some(error))) => {
                self.loading = Some(loading);
                if asked.hangup {
                    let hangup = Asked {
                        hangup: true,
                        ..Asked::default()
                    };
                    Err((hangup, error))
                } else {
                    Ok(())
                }
            }
            Err(error) => Err((asked, error)),
        })
    }
}

/// The purpose and result of the load in flight, once it ends; never,
/// with none.
pub async fn loaded(loading: &mut Option<Loading>) -> (Purpose, anyhow::Result<Prepared>) {
    match loading {
        Some(loading) => {
            let result = match (&mut loading.task).await {
                Ok(result) => result,
                Err(error) => Err(anyhow::anyhow!("the load stopped: {error}")),
            };
            (loading.purpose, result)
        }
        None => std::future::pending().await,
    }
}

/// Loads `config` for `ifaces` on a blocking thread, with the change lock
/// taken there, and its rotating sequences as they are at `at(config)`.
fn spawn_load(
    purpose: Purpose,
    config: Config,
    ifaces: Vec<String>,
    pins: &PinDir,
    at: impl FnOnce(&Config) -> SystemTime + Send + 'static,
) -> Loading {
    let pins = pins.clone();
    let task = tokio::task::spawn_blocking(move || {
        let change = pins.change(CHANGE_PATIENCE)?;
        let at = at(&config);
        prepare(config, &ifaces, &pins, change, at)
    });
    Loading { purpose, task }
}

/// How late a window's sequences may come before it is said.
const LATE_WINDOW: Duration = Duration::from_secs(1);

/// How long a rotation that failed waits before it is tried again.
const ROTATION_RETRY: Duration = Duration::from_secs(5);

/// How long before a window begins its sequences are loaded, at least
/// (at most half the shortest `rotate`): loading has the verifier check
/// the programs anew, about a second of CPU.
const ROTATION_LEAD: Duration = Duration::from_secs(3);

/// How many of the last load's durations the lead is, at least: the
/// window's own load may have to wait for another one (a reload, a
/// one-time sequence used) that began just before it.
const LEAD_PER_LOAD: u32 = 3;

/// How long before a window its generation is loaded, when the last load
/// took `took`: `ROTATION_LEAD`, or three such loads if that is longer
/// (a loaded machine, loads in a row), at most half the shortest `rotate`;
/// none without a rotating rule. The soak found that, with a load every
/// few seconds and the CPUs busy, a fixed 3 s put windows in place late.
fn rotation_lead(config: &Config, took: Duration) -> Option<Duration> {
    let shortest = config
        .rules
        .iter()
        .filter_map(|rule| Some(rule.rotating()?.rotate))
        .min()?;
    Some(lead(shortest, took))
}

/// The lead before windows of `rotate` when a load takes `took`.
fn lead(rotate: Duration, took: Duration) -> Duration {
    ROTATION_LEAD
        .max(took.saturating_mul(LEAD_PER_LOAD))
        .min(rotate / 2)
}

/// When `rotate` has its next step to take: loading the next window's
/// generation, or putting it in place.
pub fn rotation_step_at(running: &Running) -> Option<SystemTime> {
    if let Some(prepared) = &running.next_generation {
        return Some(prepared.at);
    }
    let lead = rotation_lead(&running.config, running.took)?;
    Some(running.next_rotation? - lead)
}

/// Rotating sequences change: ahead of a window, its generation is loaded
/// (the load returned) with the configuration the filter runs (not a file
/// edited since); when the window begins, it is put in place. On an error
/// the filter keeps the sequences it has, which only grow older: each
/// still opens once.
pub fn rotate(running: &mut Running, mode: AttachMode, pins: &PinDir) -> Option<Loading> {
    let now = SystemTime::now();
    match running.next_generation.take() {
        Some(prepared) if prepared.at <= now => {
            let late = now.duration_since(prepared.at).unwrap_or_default();
            match put_in_place(prepared, mode, pins, true) {
                Ok(next) => {
                    if late >= LATE_WINDOW {
                        log::warn!(
                            "a rotating window's sequences came {:.1}s after it began (the last load took {:.1}s): a knock of it in those seconds opened nothing",
                            late.as_secs_f64(),
                            next.took.as_secs_f64()
                        );
                    }
                    *running = next;
                }
                Err(error) => rotation_failed(running, &error),
            }
            None
        }
        Some(early) => {
            running.next_generation = Some(early);
            None
        }
        None => {
            let at = running.next_rotation.unwrap_or(now).max(now);
            Some(spawn_load(
                Purpose::Rotation,
                running.config.clone(),
                running.ifaces.clone(),
                pins,
                move |_| at,
            ))
        }
    }
}

/// The next window's generation, loaded ahead (or not).
pub fn rotation_loaded(running: &mut Running, result: anyhow::Result<Prepared>) {
    match result {
        Ok(prepared) => running.next_generation = Some(prepared),
        Err(error) => rotation_failed(running, &error),
    }
}

/// The filter keeps its sequences; the rotation is tried again.
fn rotation_failed(running: &mut Running, error: &anyhow::Error) {
    log::error!(
        "putting the next rotating sequences in place failed, trying again in {}s: {error:#}",
        ROTATION_RETRY.as_secs()
    );
    running.next_rotation = Some(SystemTime::now() + ROTATION_RETRY);
}

/// The interfaces a configuration goes on: the command line's, else its own.
fn ifaces_for(config: &Config, cli_ifaces: &[String]) -> Vec<String> {
    if cli_ifaces.is_empty() {
        config.interfaces.clone()
    } else {
        cli_ifaces.to_vec()
    }
}

/// Re-reads the configuration at `path` and, if it is valid and fits the
/// running filter, starts loading it (the load returned, put in place when
/// it ends) on `cli_ifaces`, else the file's; otherwise nothing changes.
fn start_reload(
    running: &mut Running,
    path: &Path,
    cli_ifaces: &[String],
    pins: &PinDir,
    mut asked: Asked,
) -> anyhow::Result<(Loading, Option<anyhow::Error>)> {
    let (config, refused) = config_to_reload(&running.config, path, asked)?;
    if refused.is_some() {
        // This load does not read the file: it is no reload of it.
        asked.hangup = false;
    }
    warn_of_served_ports(&config);
    let ifaces = ifaces_for(&config, cli_ifaces);
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
    if config.fleet != running.config.fleet {
        log::warn!(
            "[fleet] changed: this run keeps following the fleet it started with; restart it to follow the new one"
        );
    }
    // A generation loaded ahead for the next window holds the change lock
    // and the configuration being replaced: it goes.
    running.next_generation = None;
    let took = running.took;
    let loading = spawn_load(
        Purpose::Reload(asked),
        config,
        ifaces,
        pins,
        move |config| SystemTime::now() + rotation_lead(config, took).unwrap_or_default(),
    );
    Ok((loading, refused))
}

/// What a reload for `asked` loads: the file at `path` as it is now. When
/// that is refused (an edit half done) while one-time lines were used (here
/// or by the fleet), the text `running` was read from, read anew with the
/// sequences files as they are now, so the next lines go in place; the
/// file's error comes beside it then.
fn config_to_reload(
    running: &Config,
    path: &Path,
    asked: Asked,
) -> anyhow::Result<(Config, Option<anyhow::Error>)> {
    let error = match load_config(path) {
        Ok(config) => return Ok((config, None)),
        Err(error) if asked.one_time || asked.fleet_lines => error,
        Err(error) => return Err(error),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    match Config::parse_in(&running.source, dir) {
        Ok(config) => {
            log::warn!(
                "{error:#}: the next one-time sequence goes in place under the configuration last loaded, with its sequences file read anew"
            );
            Ok((config, Some(error)))
        }
        Err(again) => Err(anyhow::anyhow!(
            "{error:#}; nor is the configuration last loaded, read anew: {again}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_grows_with_slow_loads_up_to_half_a_window() {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(lead(secs(30), Duration::ZERO), secs(3));
        assert_eq!(lead(secs(30), ms(800)), secs(3));
        assert_eq!(lead(secs(30), ms(2500)), ms(7500));
        assert_eq!(lead(secs(20), secs(9)), secs(10));
        // A window shorter than twice the floor keeps half of it.
        assert_eq!(lead(secs(4), Duration::ZERO), secs(2));
        assert_eq!(lead(secs(30), Duration::MAX), secs(15));
    }
}
