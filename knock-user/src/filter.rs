//! The XDP program in the kernel: loading it with the configured map sizes,
//! filling its maps, attaching it, and reading its state back.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{ProgramError, TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode},
};
use knock_common::{
    Addr, Answer, Flow, FlowKey, Grant, PortRoles, Reason, RuleConfig, Settings, SourceHorizon,
    SourceRule, addr_words, map_names, source_slot,
};

use crate::{config::KernelConfig, host::HostAnswers};

/// The XDP program, built by build.rs from knock-ebpf.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// Reference programs for the benchmarks (`xdp_pass`, `xdp_drop`) and their
/// flood generator (`xdp_flood`), built alongside the filter.
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-baseline"));

/// ELF's machine number for BPF.
const EM_BPF: u16 = 247;

/// What this binary carries: the size of its XDP program, or `None` when it
/// was built without one (or with something that is not a BPF object).
pub fn embedded_program() -> Option<usize> {
    let machine = BPF_OBJECT.get(18..20)?;
    let is_bpf_elf = BPF_OBJECT.starts_with(b"\x7fELF")
        && u16::from_le_bytes([machine[0], machine[1]]) == EM_BPF;
    is_bpf_elf.then_some(BPF_OBJECT.len())
}

/// Why the filter could not be put in place. Whatever failed, nothing stays
/// attached: dropping a half-built `Filter` detaches it.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// This binary was built with `XKNOCK_WITHOUT_EBPF=1`, so it carries no program.
    #[error(
        "this xknock was built without its XDP program (XKNOCK_WITHOUT_EBPF=1, for checks only); build it again without that variable"
    )]
    NoProgram,
    /// The kernel refused the BPF object or one of its maps.
    #[error("loading the BPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// The verifier rejected the program; its log is in the source error.
    #[error("the kernel refused the XDP program: {0}")]
    Program(#[source] ProgramError),
    /// A map is missing from the object or could not be read or written.
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The named interface does not exist in this network namespace.
    #[error("no interface named `{0}` on this host")]
    UnknownInterface(String),
    /// The kernel would not attach the program in the requested mode.
    #[error("cannot attach to `{iface}` in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
}

/// How the program is attached: `native` runs in the driver, `generic` in
/// the kernel's network stack (works everywhere, slower), `auto` tries native
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// Fails with `UnknownInterface` unless `iface` exists here.
pub fn check_interface(iface: &str) -> Result<(), FilterError> {
    let unknown = || FilterError::UnknownInterface(iface.to_owned());
    let name = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(unknown());
    }
    Ok(())
}

/// A grant that the sweeper found expired and removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    pub source: Addr,
    pub rule: u32,
}

/// The loaded program and its maps.
pub struct Filter {
    ebpf: Ebpf,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> FilterError {
    move |source| FilterError::Map { name, source }
}

impl Filter {
    /// Loads the program with `config`'s map sizes, fills every map, and has
    /// the verifier check the program; nothing is attached yet.
    pub fn load(config: &KernelConfig) -> Result<Filter, FilterError> {
        if embedded_program().is_none() {
            return Err(FilterError::NoProgram);
        }
        let lpm_size = |entries: usize| u32::try_from(entries.max(1)).unwrap_or(u32::MAX);
        let ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FIRST_STEPS, config.first_step_entries)
            .map_max_entries(map_names::PROGRESS, config.progress_entries)
            .map_max_entries(map_names::GRANTS, config.grant_entries)
            .map_max_entries(map_names::FLOWS, config.flow_entries)
            .map_max_entries(map_names::PENALTIES, config.penalty_entries)
            .map_max_entries(map_names::ALLOW, lpm_size(config.allow.len()))
            .map_max_entries(map_names::DENY, lpm_size(config.deny.len()))
            .load(BPF_OBJECT)
            .map_err(FilterError::Load)?;
        let mut filter = Filter { ebpf };
        filter.populate(config)?;
        filter.load_xdp(knock_common::PROGRAM_NAME)?;
        filter.load_conceal()?;
        Ok(filter)
    }

    /// Has the verifier check the object's XDP program `name`.
    fn load_xdp(&mut self, name: &str) -> Result<&mut Xdp, FilterError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("the object defines {name}"))
            .try_into()
            .map_err(FilterError::Program)?;
        program.load().map_err(FilterError::Program)?;
        Ok(program)
    }

    /// Loads the program that answers stopped packets and puts it where the
    /// filter tail-calls it.
    fn load_conceal(&mut self) -> Result<(), FilterError> {
        let program = self.load_xdp(knock_common::CONCEAL_PROGRAM_NAME)?;
        let fd = program
            .fd()
            .map_err(FilterError::Program)?
            .try_clone()
            .map_err(|error| FilterError::Program(ProgramError::IOError(error)))?;
        let mut slots: ProgramArray<_> = self.map_mut(map_names::CONCEAL)?;
        slots.set(0, &fd, 0).map_err(map_error(map_names::CONCEAL))
    }

    fn populate(&mut self, config: &KernelConfig) -> Result<(), FilterError> {
        // Spoofers who cannot guess the seed cannot aim at a client's horizon.
        let seeded = Settings {
            source_seed: RandomState::new().hash_one(monotonic_ns()) as u32,
            ..HostAnswers::read().apply(config.settings)
        };
        self.set_settings(&seeded)?;
        let mut rules: Array<_, RuleConfig> = self.map_mut(map_names::RULES)?;
        for (index, rule) in config.rules.iter().enumerate() {
            rules
                .set(index as u32, rule, 0)
                .map_err(map_error(map_names::RULES))?;
        }
        let mut roles: Array<_, PortRoles> = self.map_mut(map_names::PORT_ROLES)?;
        for (index, role) in &config.port_roles {
            roles
                .set(*index, role, 0)
                .map_err(map_error(map_names::PORT_ROLES))?;
        }
        for (name, prefixes) in [
            (map_names::ALLOW, &config.allow),
            (map_names::DENY, &config.deny),
        ] {
            let mut trie: LpmTrie<_, Addr, u8> = self.map_mut(name)?;
            for (prefix_len, addr) in prefixes {
                trie.insert(&Key::new(*prefix_len, *addr), &1, 0)
                    .map_err(map_error(name))?;
            }
        }
        Ok(())
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, FilterError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(FilterError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_owned(),
            },
        })?;
        T::try_from(map).map_err(map_error(name))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, FilterError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(FilterError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_owned(),
            },
        })?;
        T::try_from(map).map_err(map_error(name))
    }

    /// Attaches to `iface`; returns the mode actually used (`auto` falls back
    /// to generic where the driver has no native XDP).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, FilterError> {
        check_interface(iface)?;
        let name = CString::new(iface).map_err(|_| FilterError::UnknownInterface(iface.into()))?;
        let program: &mut Xdp = self
            .ebpf
            .program_mut(knock_common::PROGRAM_NAME)
            .expect("the object defines the xknock program")
            .try_into()
            .map_err(FilterError::Program)?;
        let try_mode = |program: &mut Xdp, mode: AttachMode| {
            let xdp_mode = match mode {
                AttachMode::Generic => XdpMode::Skb,
                AttachMode::Native | AttachMode::Auto => XdpMode::Driver,
            };
            program
                .attach(name.as_c_str(), xdp_mode)
                .map(|_| mode)
                .map_err(|source| FilterError::Attach {
                    iface: iface.to_owned(),
                    mode,
                    source,
                })
        };
        match mode {
            AttachMode::Auto => try_mode(program, AttachMode::Native).or_else(|native_error| {
                eprintln!("xknock: native XDP is not available on `{iface}` ({native_error}); using generic mode");
                try_mode(program, AttachMode::Generic)
            }),
            mode => try_mode(program, mode),
        }
    }

    /// The loaded filter program.
    fn filter_program(&self) -> Result<&Xdp, FilterError> {
        self.ebpf
            .program(knock_common::PROGRAM_NAME)
            .expect("the object defines the xknock program")
            .try_into()
            .map_err(FilterError::Program)
    }

    /// Runs the program on `frame` through BPF_PROG_TEST_RUN, `repeat` times,
    /// as if it had arrived on an interface; nothing needs to be attached.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult, FilterError> {
        self.filter_program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(FilterError::Program)
    }

    /// Runs the program once on `frame`; returns its XDP action and the
    /// frame as the program left it (an answer, for XDP_TX).
    pub fn test_run_output(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), FilterError> {
        // Room for an ICMP error that quotes the frame.
        let mut out = vec![0u8; frame.len() + 128];
        let result = self
            .filter_program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .map_err(FilterError::Program)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// The loaded object, for tests and benchmarks that inspect or age the
    /// maps directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The global settings as loaded: the configuration's, the host's
    /// answer values and this load's seed.
    pub fn settings(&self) -> Result<Settings, FilterError> {
        let settings: Array<_, Settings> = self.map(map_names::SETTINGS)?;
        settings.get(&0, 0).map_err(map_error(map_names::SETTINGS))
    }

    /// Replaces the global settings (at load; tests and benchmarks that
    /// change the host's ICMP limits).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), FilterError> {
        let mut map: Array<_, Settings> = self.map_mut(map_names::SETTINGS)?;
        map.set(0, settings, 0)
            .map_err(map_error(map_names::SETTINGS))
    }

    /// Where `addr`'s horizon lives in `SOURCE_HORIZONS` (the slot depends on
    /// the seed this load drew), and its value.
    pub fn source_horizon(&self, addr: &Addr) -> Result<(u32, SourceHorizon), FilterError> {
        let seed = self.settings()?.source_seed;
        let slot = source_slot(&addr_words(addr), seed);
        let horizons: Array<_, SourceHorizon> = self.map(map_names::SOURCE_HORIZONS)?;
        let horizon = horizons
            .get(&slot, 0)
            .map_err(map_error(map_names::SOURCE_HORIZONS))?;
        Ok((slot, horizon))
    }

    /// Overwrites a `SOURCE_HORIZONS` slot: for tests and benchmarks that
    /// age state or plant it from here.
    pub fn set_source_horizon(
        &mut self,
        slot: u32,
        horizon: &SourceHorizon,
    ) -> Result<(), FilterError> {
        let mut horizons: Array<_, SourceHorizon> = self.map_mut(map_names::SOURCE_HORIZONS)?;
        horizons
            .set(slot, horizon, 0)
            .map_err(map_error(map_names::SOURCE_HORIZONS))
    }

    /// The event ring buffer; the caller owns it from now on.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, FilterError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(FilterError::Map {
                name: map_names::EVENTS,
                source: MapError::InvalidName {
                    name: map_names::EVENTS.to_owned(),
                },
            })?;
        RingBuf::try_from(map).map_err(map_error(map_names::EVENTS))
    }

    /// Verdict counters summed over all CPUs, by reason.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, FilterError> {
        self.per_cpu_totals(
            map_names::COUNTERS,
            Reason::ALL.map(|reason| (reason as u32, reason.name())),
        )
    }

    /// What concealment did, by kind of answer, summed over CPUs.
    pub fn answers(&self) -> Result<BTreeMap<&'static str, u64>, FilterError> {
        self.per_cpu_totals(
            map_names::ANSWERS,
            Answer::ALL.map(|answer| (answer as u32, answer.name())),
        )
    }

    /// The named slots of a per-CPU counter array, each summed over CPUs.
    fn per_cpu_totals(
        &self,
        name: &'static str,
        slots: impl IntoIterator<Item = (u32, &'static str)>,
    ) -> Result<BTreeMap<&'static str, u64>, FilterError> {
        let counters: PerCpuArray<_, u64> = self.map(name)?;
        slots
            .into_iter()
            .map(|(index, label)| {
                let per_cpu = counters.get(&index, 0).map_err(map_error(name))?;
                Ok((label, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Removes grants that expired and flows idle past their timeout; returns
    /// the expired grants so they can be reported.
    pub fn sweep(&mut self, config: &KernelConfig) -> Result<Vec<ExpiredGrant>, FilterError> {
        let now = monotonic_ns();
        let mut grants: HashMap<_, SourceRule, Grant> = self.map_mut(map_names::GRANTS)?;
        let expired: Vec<SourceRule> = grants
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, grant)| grant.expires_ns <= now)
            .map(|(key, _)| key)
            .collect();
        for key in &expired {
            // Gone already (evicted, or removed by a racing sweep) is fine.
            let _ = grants.remove(key);
        }
        let mut flows: HashMap<_, FlowKey, Flow> = self.map_mut(map_names::FLOWS)?;
        let idle: Vec<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, flow)| {
                let timeout = match (key.proto, flow.closing) {
                    (knock_common::IPPROTO_UDP, _) => config.settings.udp_idle_ns,
                    (_, 0) => config.settings.tcp_idle_ns,
                    _ => config.settings.tcp_closing_ns,
                };
                now.saturating_sub(flow.last_seen_ns) > timeout
            })
            .map(|(key, _)| key)
            .collect();
        for key in &idle {
            let _ = flows.remove(key);
        }
        Ok(expired
            .into_iter()
            .map(|key| ExpiredGrant {
                source: key.addr,
                rule: key.rule,
            })
            .collect())
    }
}

/// The clock the XDP program reads (CLOCK_MONOTONIC), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32).as_nanos() as u64
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
