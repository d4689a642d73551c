//! The one typed layer over the filter's maps: `run`, `status`, `grant`,
//! `revoke`, the tests and the bench all read and write the kernel's state
//! through it, whether the maps come from a program just loaded or from the
//! pins of a filter no process holds.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    sys::SyscallError,
};
use knock_common::{
    Addr, Answer, Flow, FlowKey, Grant, IPPROTO_UDP, Instance, PortRoles, Progress, Reason,
    RuleConfig, SOURCE_HORIZON_SLOTS, Settings, SourceHorizon, SourceRule, SpentKey, addr_words,
    horizon_units, map_names, source_slot,
};

use super::pins::{GENERATION_MAPS, PinDir, STATE_MAPS};

/// A map is missing, or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {name}")]
pub struct MapsError {
    pub name: &'static str,
    #[source]
    pub source: MapError,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { name, source }
}

/// The maps a loaded or pinned filter reads and writes, by name.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
    /// `SOURCE_HORIZONS` in this process's memory, mapped at first use and
    /// kept: planting a million entries mapped it a million times.
    horizons: OnceLock<MappedHorizons>,
}

/// A grant the sweeper found expired and removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    pub source: Addr,
    pub rule: u32,
}

/// What `remember_replay` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remembered {
    /// Remembered from now on.
    Now,
    /// It was remembered already: a replay.
    Already,
    /// The map is full.
    Full,
}

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

/// The programs the filter tail-calls, each with its slot (a program array
/// of one): `xknock_conceal` answers stopped packets, `xknock_knock` runs
/// possible knock steps (echo requests too).
pub const TAIL_CALLS: [(&str, &str); 2] = [
    (knock_common::CONCEAL_PROGRAM_NAME, map_names::CONCEAL),
    (knock_common::KNOCK_PROGRAM_NAME, map_names::KNOCK),
];

/// How full a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Occupancy {
    pub entries: u32,
    pub max_entries: u32,
}

impl Maps {
    fn of(maps: BTreeMap<&'static str, Map>) -> Maps {
        Maps {
            maps,
            horizons: OnceLock::new(),
        }
    }

    /// Takes the maps out of a freshly loaded object (the programs keep
    /// their own references).
    pub fn take(ebpf: &mut Ebpf) -> Maps {
        let maps = STATE_MAPS
            .iter()
            .chain(&GENERATION_MAPS)
            .filter(|name| !is_program_slot(name))
            .filter_map(|name| Some((*name, ebpf.take_map(name)?)))
            .collect();
        Maps::of(maps)
    }

    /// Opens the maps of a pinned filter: its state, and the configuration
    /// of `generation`.
    pub fn open(pins: &PinDir, generation: u64) -> Result<Maps, MapsError> {
        let generation_dir = pins.generation(generation);
        let mut maps = BTreeMap::new();
        let paths = STATE_MAPS.iter().map(|name| (*name, pins.map(name))).chain(
            GENERATION_MAPS
                .iter()
                .filter(|name| **name != map_names::CONCEAL)
                .map(|name| (*name, generation_dir.join(name))),
        );
        for (name, path) in paths {
            maps.insert(name, open_pinned(name, &path)?);
        }
        Ok(Maps::of(maps))
    }

    /// Just the instance record of a pinned filter.
    pub fn open_instance(path: &Path) -> Result<Maps, MapsError> {
        let name = map_names::INSTANCE;
        let maps = BTreeMap::from([(name, open_pinned(name, path)?)]);
        Ok(Maps::of(maps))
    }

    fn get<'a, T>(&'a self, name: &'static str) -> Result<T, MapsError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        let map = self.maps.get(name).ok_or_else(|| missing(name))?;
        T::try_from(map).map_err(map_error(name))
    }

    fn get_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, MapsError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.maps.get_mut(name).ok_or_else(|| missing(name))?;
        T::try_from(map).map_err(map_error(name))
    }

    /// The event ring buffer; the caller owns it from now on.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, MapsError> {
        self.take_ring(map_names::EVENTS)
    }

    /// The ring of datagrams to SPA ports; the caller owns it from now on.
    pub fn take_spa_datagrams(&mut self) -> Result<RingBuf<MapData>, MapsError> {
        self.take_ring(map_names::SPA_DATAGRAMS)
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, MapsError> {
        let map = self.maps.remove(name).ok_or_else(|| missing(name))?;
        RingBuf::try_from(map).map_err(map_error(name))
    }

    /// Whether an SPA packet with replay key `key` was accepted and is
    /// still remembered.
    pub fn replayed(&self, key: &[u8; 32]) -> Result<bool, MapsError> {
        let map: HashMap<_, [u8; 32], u64> = self.get(map_names::REPLAY)?;
        match map.get(key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(error) => Err(map_error(map_names::REPLAY)(error)),
        }
    }

    /// Remembers an accepted SPA packet's replay key until `until` (Unix
    /// seconds), unless it is remembered already.
    pub fn remember_replay(&mut self, key: &[u8; 32], until: u64) -> Result<Remembered, MapsError> {
        let mut map: HashMap<_, [u8; 32], u64> = self.get_mut(map_names::REPLAY)?;
        match map.insert(key, &until, BPF_NOEXIST) {
            Ok(()) => Ok(Remembered::Now),
            Err(MapError::SyscallError(error)) => match error.io_error.raw_os_error() {
                Some(libc::EEXIST) => Ok(Remembered::Already),
                Some(libc::E2BIG) => Ok(Remembered::Full),
                _ => Err(map_error(map_names::REPLAY)(MapError::SyscallError(error))),
            },
            Err(error) => Err(map_error(map_names::REPLAY)(error)),
        }
    }

    /// Forgets SPA replay keys remembered until before `now` (Unix
    /// seconds); returns how many were forgotten.
    pub fn prune_replays(&mut self, now: u64) -> Result<usize, MapsError> {
        Ok(self
            .remove_where::<[u8; 32], u64>(map_names::REPLAY, |_, until| *until < now)?
            .len())
    }

    /// How many SPA replay keys are remembered.
    pub fn replay_entries(&self) -> Result<usize, MapsError> {
        let map: HashMap<_, [u8; 32], u64> = self.get(map_names::REPLAY)?;
        Ok(map.keys().count())
    }

    /// Index 0 of a one-element array.
    fn single<T: aya::Pod>(&self, name: &'static str) -> Result<T, MapsError> {
        let array: Array<_, T> = self.get(name)?;
        array.get(&0, 0).map_err(map_error(name))
    }

    fn set_single<T: aya::Pod>(&mut self, name: &'static str, value: &T) -> Result<(), MapsError> {
        let mut array: Array<_, T> = self.get_mut(name)?;
        array.set(0, value, 0).map_err(map_error(name))
    }

    /// The global settings of this configuration.
    pub fn settings(&self) -> Result<Settings, MapsError> {
        self.single(map_names::SETTINGS)
    }

    /// Replaces the global settings (at load; tests and benchmarks that
    /// change the host's ICMP limits).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), MapsError> {
        self.set_single(map_names::SETTINGS, settings)
    }

    /// What every loader of this pin directory shares.
    pub fn instance(&self) -> Result<Instance, MapsError> {
        self.single(map_names::INSTANCE)
    }

    pub fn set_instance(&mut self, instance: &Instance) -> Result<(), MapsError> {
        self.set_single(map_names::INSTANCE, instance)
    }

    /// The rule at each index of this configuration (free ones included).
    pub fn rules(&self) -> Result<Vec<RuleConfig>, MapsError> {
        let settings = self.settings()?;
        let rules: Array<_, RuleConfig> = self.get(map_names::RULES)?;
        (0..settings.rules)
            .map(|index| rules.get(&index, 0).map_err(map_error(map_names::RULES)))
            .collect()
    }

    /// Fills the configuration maps of a new generation.
    pub fn write_rules(
        &mut self,
        rules: &[RuleConfig],
        port_roles: &[(u32, PortRoles)],
    ) -> Result<(), MapsError> {
        let mut array: Array<_, RuleConfig> = self.get_mut(map_names::RULES)?;
        for (index, rule) in rules.iter().enumerate() {
            array
                .set(index as u32, rule, 0)
                .map_err(map_error(map_names::RULES))?;
        }
        let mut roles: Array<_, PortRoles> = self.get_mut(map_names::PORT_ROLES)?;
        for (index, role) in port_roles {
            roles
                .set(*index, role, 0)
                .map_err(map_error(map_names::PORT_ROLES))?;
        }
        Ok(())
    }

    /// Fills the allow or deny list of a new generation.
    pub fn write_prefixes(
        &mut self,
        name: &'static str,
        prefixes: &[(u32, Addr)],
    ) -> Result<(), MapsError> {
        let mut trie: aya::maps::LpmTrie<_, Addr, u8> = self.get_mut(name)?;
        for (prefix_len, addr) in prefixes {
            trie.insert(&aya::maps::lpm_trie::Key::new(*prefix_len, *addr), &1, 0)
                .map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Verdict counters summed over all CPUs, by reason.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, MapsError> {
        self.per_cpu_totals(
            map_names::COUNTERS,
            Reason::ALL.map(|reason| (reason as u32, reason.name())),
        )
    }

    /// What concealment did, by kind of answer, summed over CPUs.
    pub fn answers(&self) -> Result<BTreeMap<&'static str, u64>, MapsError> {
        self.per_cpu_totals(
            map_names::ANSWERS,
            Answer::ALL.map(|answer| (answer as u32, answer.name())),
        )
    }

    /// Events the full ring buffer could not take, since the filter was made.
    pub fn lost_events(&self) -> Result<u64, MapsError> {
        let totals = self.per_cpu_totals(map_names::LOST_EVENTS, [(0, "lost")])?;
        Ok(totals["lost"])
    }

    /// The named slots of a per-CPU counter array, each summed over CPUs.
    fn per_cpu_totals(
        &self,
        name: &'static str,
        slots: impl IntoIterator<Item = (u32, &'static str)>,
    ) -> Result<BTreeMap<&'static str, u64>, MapsError> {
        let counters: PerCpuArray<_, u64> = self.get(name)?;
        slots
            .into_iter()
            .map(|(index, label)| {
                let per_cpu = counters.get(&index, 0).map_err(map_error(name))?;
                Ok((label, per_cpu.iter().sum()))
            })
            .collect()
    }

    fn entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, MapsError> {
        let map: HashMap<_, K, V> = self.get(name)?;
        // Entries the kernel evicts while we walk are simply not listed.
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Removes the entries of hash map `name` that `doomed` picks; returns them.
    fn remove_where<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        doomed: impl Fn(&K, &V) -> bool,
    ) -> Result<Vec<(K, V)>, MapsError> {
        let gone: Vec<(K, V)> = self
            .entries(name)?
            .into_iter()
            .filter(|(k, v)| doomed(k, v))
            .collect();
        let mut map: HashMap<_, K, V> = self.get_mut(name)?;
        for (key, _) in &gone {
            // Gone already (evicted, or removed by the kernel) is fine.
            let _ = map.remove(key);
        }
        Ok(gone)
    }

    /// Every grant, live or expired but not yet swept.
    pub fn grants(&self) -> Result<Vec<(SourceRule, Grant)>, MapsError> {
        self.entries(map_names::GRANTS)
    }

    /// Every admitted flow.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, MapsError> {
        self.entries(map_names::FLOWS)
    }

    /// Sequences that opened once and may not again: (rule index, sequence
    /// tag) and when.
    pub fn spent(&self) -> Result<Vec<(SpentKey, u64)>, MapsError> {
        self.entries(map_names::SPENT)
    }

    /// Sources' progress, both maps: those after a first step, those further.
    pub fn progress(&self) -> Result<Vec<(SourceRule, Progress)>, MapsError> {
        let mut all = self.entries(map_names::FIRST_STEPS)?;
        all.extend(self.entries::<SourceRule, Progress>(map_names::PROGRESS)?);
        Ok(all)
    }

    /// Sources' records of failed attempts (their windows and penalties).
    pub fn penalties(&self) -> Result<Vec<(Addr, knock_common::Penalty)>, MapsError> {
        self.entries(map_names::PENALTIES)
    }

    /// Progress of sources past their first step (`PROGRESS` alone).
    pub fn later_progress(&self) -> Result<Vec<(SourceRule, Progress)>, MapsError> {
        self.entries(map_names::PROGRESS)
    }

    /// How full each bounded state map is.
    pub fn occupancy(&self) -> Result<BTreeMap<&'static str, Occupancy>, MapsError> {
        let mut all = BTreeMap::new();
        for name in [
            map_names::FIRST_STEPS,
            map_names::PROGRESS,
            map_names::GRANTS,
            map_names::FLOWS,
            map_names::PENALTIES,
        ] {
            let map = self.maps.get(name).ok_or_else(|| missing(name))?;
            let max_entries = map_data(map).info().map_err(map_error(name))?.max_entries();
            let keys = match name {
                map_names::FLOWS => self.get::<HashMap<_, FlowKey, Flow>>(name)?.keys().count(),
                map_names::PENALTIES => self
                    .get::<HashMap<_, Addr, knock_common::Penalty>>(name)?
                    .keys()
                    .count(),
                map_names::GRANTS => self
                    .get::<HashMap<_, SourceRule, Grant>>(name)?
                    .keys()
                    .count(),
                _ => self
                    .get::<HashMap<_, SourceRule, Progress>>(name)?
                    .keys()
                    .count(),
            };
            all.insert(
                name,
                Occupancy {
                    entries: keys as u32,
                    max_entries,
                },
            );
        }
        Ok(all)
    }

    /// Where `addr`'s horizons live in `SOURCE_HORIZONS` (the slot depends
    /// on the instance's seed), and their value.
    pub fn source_horizon(&self, addr: &Addr) -> Result<(u32, SourceHorizon), MapsError> {
        let seed = self.settings()?.source_seed;
        let slot = source_slot(&addr_words(addr), seed);
        let horizons: Array<_, SourceHorizon> = self.get(map_names::SOURCE_HORIZONS)?;
        let horizon = horizons
            .get(&slot, 0)
            .map_err(map_error(map_names::SOURCE_HORIZONS))?;
        Ok((slot, horizon))
    }

    /// Overwrites a whole `SOURCE_HORIZONS` slot: for tests and the bench,
    /// while no traffic runs (`grant` changes one word, atomically).
    pub fn set_source_horizon(
        &mut self,
        slot: u32,
        horizon: &SourceHorizon,
    ) -> Result<(), MapsError> {
        let mut horizons: Array<_, SourceHorizon> = self.get_mut(map_names::SOURCE_HORIZONS)?;
        horizons
            .set(slot, horizon, 0)
            .map_err(map_error(map_names::SOURCE_HORIZONS))
    }

    /// `SOURCE_HORIZONS` mapped into this process.
    fn mapped_horizons(&self) -> Result<&MappedHorizons, MapsError> {
        if let Some(mapped) = self.horizons.get() {
            return Ok(mapped);
        }
        let name = map_names::SOURCE_HORIZONS;
        let map = self.maps.get(name).ok_or_else(|| missing(name))?;
        let mapped = MappedHorizons::map(map_data(map)).map_err(|io_error| MapsError {
            name,
            source: MapError::SyscallError(SyscallError {
                call: "mmap",
                io_error,
            }),
        })?;
        // Of two threads mapping at once, one mapping stays; the other is
        // unmapped as it drops.
        Ok(self.horizons.get_or_init(|| mapped))
    }

    /// Grants `addr` rule `rule` until `expires_ns` (kernel clock), as the
    /// kernel does when a sequence completes: the source's admitted horizon
    /// first (else the filter could skip the lookup that finds the grant),
    /// then the grant.
    pub fn grant(&mut self, addr: &Addr, rule: u32, expires_ns: u64) -> Result<(), MapsError> {
        let (slot, horizon) = self.source_horizon(addr)?;
        // Past the grant's end, as `horizon_span` would raise it from now.
        let until = horizon_units(expires_ns).saturating_add(2);
        if horizon.admitted_until < until {
            // That word alone, atomically: the slot's other words are the
            // XDP program's to raise and count at any moment. (A raise of
            // the same word by the program at the same moment may win with
            // its own span: at least any `open_for` or idle time of the
            // configuration.)
            self.mapped_horizons()?
                .word(slot, core::mem::offset_of!(SourceHorizon, admitted_until))
                .fetch_max(until, Ordering::SeqCst);
        }
        let mut grants: HashMap<_, SourceRule, Grant> = self.get_mut(map_names::GRANTS)?;
        grants
            .insert(&SourceRule { addr: *addr, rule }, &Grant { expires_ns }, 0)
            .map_err(map_error(map_names::GRANTS))
    }

    /// Removes `addr`'s grants (of the rule indexes `rules` only, if given) and, with
    /// `flows`, the connections they admitted; returns how many of each.
    pub fn revoke(
        &mut self,
        addr: &Addr,
        rules: Option<&[u32]>,
        flows: bool,
    ) -> Result<(usize, usize), MapsError> {
        let of_rule = |r: u32| rules.is_none_or(|wanted| wanted.contains(&r));
        let grants = self.remove_where::<SourceRule, Grant>(map_names::GRANTS, |k, _| {
            k.addr == *addr && of_rule(k.rule)
        })?;
        let flows = if flows {
            self.remove_where::<FlowKey, Flow>(map_names::FLOWS, |k, f| {
                k.addr == *addr && of_rule(f.rule)
            })?
            .len()
        } else {
            0
        };
        Ok((grants.len(), flows))
    }

    /// Removes every grant, flow and progress of the rule indexes `rules`.
    pub fn clear_rules(&mut self, rules: &[u32]) -> Result<(), MapsError> {
        if rules.is_empty() {
            return Ok(());
        }
        for name in [map_names::FIRST_STEPS, map_names::PROGRESS] {
            self.remove_where::<SourceRule, Progress>(name, |k, _| rules.contains(&k.rule))?;
        }
        self.remove_where::<SourceRule, Grant>(map_names::GRANTS, |k, _| rules.contains(&k.rule))?;
        self.remove_where::<FlowKey, Flow>(map_names::FLOWS, |_, f| rules.contains(&f.rule))?;
        Ok(())
    }

    /// Removes grants that expired and flows idle past their timeout at
    /// `now` (kernel clock); returns the expired grants so they can be
    /// reported.
    pub fn sweep(&mut self, now: u64) -> Result<Vec<ExpiredGrant>, MapsError> {
        let settings = self.settings()?;
        let expired =
            self.remove_where::<SourceRule, Grant>(map_names::GRANTS, |_, g| g.expires_ns <= now)?;
        self.remove_where::<FlowKey, Flow>(map_names::FLOWS, |key, flow| {
            let timeout = match (key.proto, flow.closing) {
                (IPPROTO_UDP, _) => settings.udp_idle_ns,
                (_, 0) => settings.tcp_idle_ns,
                _ => settings.tcp_closing_ns,
            };
            now.saturating_sub(flow.last_seen_ns) > timeout
        })?;
        Ok(expired
            .into_iter()
            .map(|(key, _)| ExpiredGrant {
                source: key.addr,
                rule: key.rule,
            })
            .collect())
    }
}

/// Test-only access: moving the kernel's timestamps, planting state.
#[cfg(feature = "testing")]
impl Maps {
    /// Rewrites every value of hash map `name` with `change`.
    fn rewrite<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        change: impl Fn(&mut V),
    ) -> Result<(), MapsError> {
        let entries: Vec<(K, V)> = self.entries(name)?;
        let mut map: HashMap<_, K, V> = self.get_mut(name)?;
        for (key, mut value) in entries {
            change(&mut value);
            map.insert(&key, &value, 0).map_err(map_error(name))?;
        }
        Ok(())
    }

    /// Moves every timestamp the kernel stored back by `ns`, as if that much
    /// time had passed (the program compares with wrapping arithmetic, except
    /// grant and penalty ends, which must not wrap into the future); the
    /// horizons of `sources` move back by whole units, rounded down, so they
    /// still cover what they covered.
    pub fn age(&mut self, ns: u64, sources: &[Addr]) -> Result<(), MapsError> {
        for name in [map_names::FIRST_STEPS, map_names::PROGRESS] {
            self.rewrite::<SourceRule, Progress>(name, |p| {
                p.started_ns = p.started_ns.wrapping_sub(ns)
            })?;
        }
        self.rewrite::<SourceRule, Grant>(map_names::GRANTS, |g| {
            g.expires_ns = g.expires_ns.saturating_sub(ns)
        })?;
        self.rewrite::<Addr, knock_common::Penalty>(map_names::PENALTIES, |p| {
            p.window_start_ns = p.window_start_ns.wrapping_sub(ns);
            p.ignored_until_ns = p.ignored_until_ns.saturating_sub(ns);
        })?;
        self.rewrite::<FlowKey, Flow>(map_names::FLOWS, |f| {
            f.last_seen_ns = f.last_seen_ns.wrapping_sub(ns)
        })?;
        let units = (ns >> knock_common::HORIZON_UNIT_SHIFT) as u32;
        // Each slot once, though sources may share one.
        let mut slots = BTreeMap::new();
        for addr in sources {
            let (slot, horizon) = self.source_horizon(addr)?;
            slots.insert(slot, horizon);
        }
        for (slot, horizon) in slots {
            let aged = SourceHorizon {
                knocking_until: horizon.knocking_until.saturating_sub(units),
                admitted_until: horizon.admitted_until.saturating_sub(units),
                failing_until: horizon.failing_until.saturating_sub(units),
                ..horizon
            };
            self.set_source_horizon(slot, &aged)?;
        }
        Ok(())
    }

    /// Removes every grant and flow.
    pub fn clear_grants_and_flows(&mut self) -> Result<(), MapsError> {
        self.remove_where::<SourceRule, Grant>(map_names::GRANTS, |_, _| true)?;
        self.remove_where::<FlowKey, Flow>(map_names::FLOWS, |_, _| true)?;
        Ok(())
    }

    /// Stores progress as if the kernel had made it.
    pub fn plant_progress(
        &mut self,
        key: &SourceRule,
        progress: &Progress,
    ) -> Result<(), MapsError> {
        let name = if progress.next_step <= 1 {
            map_names::FIRST_STEPS
        } else {
            // Counted in the source's slot, as the kernel counts it.
            let (slot, _) = self.source_horizon(&key.addr)?;
            self.mapped_horizons()?
                .word(slot, core::mem::offset_of!(SourceHorizon, later_steps))
                .fetch_add(1, Ordering::SeqCst);
            map_names::PROGRESS
        };
        let mut map: HashMap<_, SourceRule, Progress> = self.get_mut(name)?;
        map.insert(key, progress, 0).map_err(map_error(name))
    }

    /// Stores a grant without raising its source's horizon.
    pub fn plant_grant(&mut self, key: &SourceRule, grant: &Grant) -> Result<(), MapsError> {
        let mut map: HashMap<_, SourceRule, Grant> = self.get_mut(map_names::GRANTS)?;
        map.insert(key, grant, 0)
            .map_err(map_error(map_names::GRANTS))
    }

    /// The fd of every map, by name, to read what the kernel charges for it.
    pub fn fds(&self) -> BTreeMap<&'static str, std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.maps
            .iter()
            .map(|(name, map)| (*name, map_data(map).fd().as_fd().as_raw_fd()))
            .collect()
    }
}

/// The program arrays, which stay with the programs that tail-call them.
fn is_program_slot(name: &str) -> bool {
    TAIL_CALLS.iter().any(|(_, slot)| *slot == name)
}

fn missing(name: &'static str) -> MapsError {
    MapsError {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    }
}

fn open_pinned(name: &'static str, path: &Path) -> Result<Map, MapsError> {
    let data = MapData::from_pin(path).map_err(map_error(name))?;
    Map::from_map_data(data).map_err(map_error(name))
}

/// `SOURCE_HORIZONS` mapped into this process (the map is
/// BPF_F_MMAPABLE), so the loader changes one word of a slot atomically: a
/// write through the bpf syscall replaces a whole slot, and could undo what
/// the XDP program wrote to its other words in the same moment.
struct MappedHorizons {
    base: *mut libc::c_void,
    len: usize,
}

impl MappedHorizons {
    fn map(data: &MapData) -> std::io::Result<MappedHorizons> {
        let len = SOURCE_HORIZON_SLOTS as usize * size_of::<SourceHorizon>();
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared mapping of the map's fd; the kernel refuses
        // one longer than the map's values (its slots, page-rounded).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedHorizons { base, len })
    }

    /// The word at `field` (an offset into `SourceHorizon`) of `slot`.
    fn word(&self, slot: u32, field: usize) -> &AtomicU32 {
        assert!(
            slot < SOURCE_HORIZON_SLOTS && field + 4 <= size_of::<SourceHorizon>(),
            "a word of a horizon slot"
        );
        let at = slot as usize * size_of::<SourceHorizon>() + field;
        // SAFETY: inside the mapping (checked above), 4-aligned (a
        // page-aligned base, 16-byte slots of u32 fields), and the program
        // changes it only by whole-word stores or atomic adds.
        unsafe { AtomicU32::from_ptr(self.base.cast::<u8>().add(at).cast::<u32>()) }
    }
}

// SAFETY: a shared mapping of kernel memory, valid until dropped, which
// any thread may read and which is only ever changed through atomics.
unsafe impl Send for MappedHorizons {}
// SAFETY: as above; `word` hands out atomics only.
unsafe impl Sync for MappedHorizons {}

impl Drop for MappedHorizons {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The data behind any kind of map this filter uses.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::LruHashMap(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::RingBuf(data)
        | Map::ProgramArray(data) => data,
        other => unreachable!("xknock has no map of kind {other:?}"),
    }
}

/// An address in the one key form (IPv4 mapped into IPv6).
pub fn key_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Shows a key address as IPv4 when it is IPv4-mapped.
pub fn display_addr(addr: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
