//! The XDP program in the kernel: loading it with the configured map sizes,
//! filling its maps, attaching it, and reading its state back. Its
//! submodules own what it stands on: the pin directory, the maps, the
//! placement of rules in slots. Beside the XDP filter, every interface gets
//! the TC egress program that gives the host's answers to steered packets
//! back their ports (`knock_common::steer`).

pub mod maps;
pub mod pins;
pub mod slots;
pub mod table;

use std::{
    ffi::CString,
    fmt,
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapError, ProgramArray},
    programs::{
        LinkOrder, ProgramError, ProgramInfo, SchedClassifier, TcAttach, TcAttachType,
        TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode,
        links::FdLink,
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use knock_common::{Instance, LAYOUT_VERSION, MAX_RULES, RESTORE_PROGRAM_NAME, RuleName, Settings};

use self::{
    maps::{Maps, MapsError},
    pins::{Lock, PinDir, PinError},
    slots::{NoFreeSlot, Placement, place},
    table::{Kind, TABLE, name},
};
use crate::config::{Config, KernelConfig, KernelConfigError};
pub use maps::{ExpiredGrant, display_addr, grant_prefix, key_addr, scope_prefix};

/// The XDP program, built by build.rs from knock-ebpf.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// The same filter with every decision about one source logged (aya-log),
/// which `xknock trace` swaps in while it runs.
pub static TRACED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-traced"));

/// The pin of a generation's filter program, in its directory.
pub const PROGRAM_PIN: &str = "PROGRAM";

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

/// Why the filter could not be put in place. Whatever failed, the filter
/// that was running keeps running as it was.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// This binary was built with `XKNOCK_WITHOUT_EBPF=1`, so it carries no program.
    #[error(
        "this xknock was built without its XDP program (XKNOCK_WITHOUT_EBPF=1, for checks only); build it again without that variable"
    )]
    NoProgram,
    /// The kernel refused the BPF object or one of its maps.
    #[error("loading the BPF object failed")]
    Load(#[source] aya::EbpfError),
    /// The BPF object lacks a program this xknock needs (a build of
    /// mismatched parts).
    #[error("the BPF object has no program `{0}`; rebuild xknock")]
    MissingProgram(String),
    /// A pinned map's size or type differs from what the configuration asks.
    #[error(
        "{key}: the running filter's {map} map has {property} {pinned}, the configuration asks for {wanted}; a map cannot change while the filter runs: keep the old value, or take the filter off (`xknock detach`, which forgets every grant, flow and knock in progress) and run again"
    )]
    PinnedMapChanged {
        key: &'static str,
        map: String,
        property: &'static str,
        pinned: u64,
        wanted: u64,
    },
    /// The verifier rejected the program; its log is in the source error.
    #[error("the kernel refused the XDP program")]
    Program(#[source] ProgramError),
    /// A map could not be read or written.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The configuration does not fit the kernel's representation.
    #[error(transparent)]
    Config(#[from] KernelConfigError),
    /// The pin directory cannot be used.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The configuration does not fit the running filter's rule indexes.
    #[error(transparent)]
    Slots(#[from] NoFreeSlot),
    /// The named interface does not exist in this network namespace.
    #[error("no interface named `{0}` on this host")]
    UnknownInterface(String),
    /// The kernel would not attach the program in the requested mode.
    #[error("cannot attach to `{iface}` in {mode} mode")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    /// Only a BPF link survives its loader; a netlink attachment would
    /// come off when this process ends.
    #[error(
        "`{iface}`: the kernel gave no BPF link for XDP (Linux 5.9 or later is needed); xknock will not attach a filter that a crash of this process would remove"
    )]
    NoPinnableLink { iface: String },
    /// The pinned link could not be used or made.
    #[error("the pinned XDP link of `{iface}`")]
    Link {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    /// The egress program that gives answers back their ports could not be
    /// attached (TCX, Linux 6.6 or later).
    #[error(
        "cannot attach the egress program to `{iface}` (TCX, Linux 6.6 or later, is needed for `conceal = \"closed\"`)"
    )]
    Egress {
        iface: String,
        #[source]
        source: ProgramError,
    },
    /// The pinned egress link could not be used or made.
    #[error("the pinned egress link of `{iface}`")]
    EgressLink {
        iface: String,
        #[source]
        source: std::io::Error,
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

/// The loaded programs and their maps.
pub struct Filter {
    ebpf: Ebpf,
    maps: Maps,
    /// For a pinned filter: what `commit` makes official once every link
    /// runs this program.
    pending: Option<Box<Pending>>,
    /// The rule indexes of each of the configuration's rules.
    slots: Vec<Vec<u32>>,
}

/// A pinned load not yet committed.
struct Pending {
    placement: Placement,
    generation: u64,
    unused: UnusedGeneration,
}

/// A generation's pin directory, removed on drop unless taken into use.
struct UnusedGeneration(Option<PathBuf>);

/// What happened on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Attached where no filter was, in this mode.
    Attached(AttachMode),
    /// The program on the interface's pinned link was replaced by this one,
    /// in one step (the link keeps the mode it was made with).
    Replaced(String),
}

/// Which map limit a pinned map's size comes from.
fn limit_key(map: &str) -> &'static str {
    table::row(map)
        .and_then(|row| row.limit?.key())
        .unwrap_or("the xknock version (its maps changed without a new layout)")
}

impl Filter {
    /// Loads the program with `config`'s map sizes, fills every map, and has
    /// the verifier check it; nothing is pinned or attached (tests and
    /// benchmarks).
    pub fn load(config: &KernelConfig) -> Result<Filter, FilterError> {
        let ebpf = Filter::loader(config)
            .load(BPF_OBJECT)
            .map_err(load_error)?;
        let mut ebpf = ebpf;
        let maps = Maps::take(&mut ebpf);
        Filter::finish_with(ebpf, maps, config, random_seed())
    }

    /// A loader that gives every map the configuration sizes its size.
    fn loader(config: &KernelConfig) -> EbpfLoader<'static> {
        let mut loader = EbpfLoader::new();
        for row in TABLE {
            if let Some(limit) = row.limit {
                loader.map_max_entries(row.name, config.entries(limit));
            }
        }
        loader
    }

    /// Loads `config` as the next generation of the filter pinned at
    /// `pins` (or as its first): the state maps are the pinned ones, kept as
    /// they are; the configuration gets maps of its own. Nothing the
    /// running filter uses changes until `install` swaps the programs; the
    /// caller holds the directory's lock. Rotating sequences are those of
    /// `now`.
    pub fn load_pinned(
        config: &Config,
        pins: &PinDir,
        _lock: &Lock,
        now: SystemTime,
    ) -> Result<Filter, FilterError> {
        if embedded_program().is_none() {
            return Err(FilterError::NoProgram);
        }
        let sizes = KernelConfig::try_from(config)?;
        let previous = read_instance(pins)?.map_or(0, |i| i.generation);
        let generation = previous + 1;
        let dir = pins.new_generation(generation)?;
        // Removed again if the load goes no further.
        let unused = UnusedGeneration(Some(dir.clone()));
        let mut loader = Filter::loader(&sizes);
        // The state pinned already is taken over as it is; the
        // configuration's maps and slots are made in the new generation's
        // directory.
        for row in TABLE {
            if let Some(path) = pins.pin(row, generation) {
                loader.map_pin_path(row.name, path);
            }
        }
        let mut ebpf = loader.load(BPF_OBJECT).map_err(load_error)?;
        let mut maps = Maps::take(&mut ebpf);
        let mut instance = maps.instance()?;
        if instance.layout == 0 {
            instance = Instance {
                layout: LAYOUT_VERSION,
                source_seed: random_seed(),
                generation: 0,
                rules: [RuleName::default(); MAX_RULES],
            };
        }
        let names: Vec<(&str, usize)> = config
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.parts()))
            .collect();
        let placement = place(&instance.rules, &names)?;
        // Indexes new to this configuration may hold what a loader that
        // died mid-change left; the running program has no rule there.
        let fresh: Vec<u32> = placement
            .slots
            .iter()
            .flatten()
            .copied()
            .filter(|&slot| instance.rules[slot as usize].get().is_none())
            .collect();
        maps.clear_rules(&fresh)?;
        // Until the swap, both configurations' rules own their indexes.
        for &slot in placement.slots.iter().flatten() {
            instance.rules[slot as usize] = placement.names[slot as usize];
        }
        maps.set_instance(&instance)?;
        let kernel = KernelConfig::placed(config, &placement.slots, now)?;
        let mut filter = Filter::finish_with(ebpf, maps, &kernel, instance.source_seed)?;
        // What a trace puts back when it ends.
        filter
            .program_mut()?
            .pin(dir.join(PROGRAM_PIN))
            .map_err(|e| FilterError::Program(ProgramError::IOError(std::io::Error::other(e))))?;
        filter.pending = Some(Box::new(Pending {
            placement,
            generation,
            unused,
        }));
        Ok(filter)
    }

    /// The traced variant, loaded like `load` and set to trace `source`
    /// (benchmarks: what every packet pays while a trace runs).
    #[cfg(feature = "testing")]
    pub fn load_traced(
        config: &KernelConfig,
        source: &knock_common::Addr,
    ) -> Result<Filter, FilterError> {
        let words = knock_common::addr_words(source);
        let mut loader = Filter::loader(config);
        loader.override_global(TRACE_SOURCE, &words, true);
        let mut ebpf = loader.load(TRACED_OBJECT).map_err(load_error)?;
        let maps = Maps::take(&mut ebpf);
        let mut filter = Filter::finish_with(ebpf, maps, config, random_seed())?;
        set_trace_program(&mut filter.ebpf)?;
        Ok(filter)
    }

    /// Fills the configuration maps and loads both programs.
    fn finish_with(
        ebpf: Ebpf,
        maps: Maps,
        config: &KernelConfig,
        seed: u32,
    ) -> Result<Filter, FilterError> {
        let mut filter = Filter {
            ebpf,
            maps,
            pending: None,
            slots: config.slots.clone(),
        };
        // Spoofers who cannot guess the seed cannot aim at a client's horizon.
        let settings = Settings {
            source_seed: seed,
            ipv4_slot_prefix: knock_common::ipv4_slot_prefix(seed),
            ..config.settings
        };
        filter.maps.set_settings(&settings)?;
        filter.maps.write_rules(&config.rules, &config.port_roles)?;
        filter.maps.write_lists(&config.allow, &config.deny)?;
        filter.load_xdp(knock_common::PROGRAM_NAME)?;
        set_tail_calls(&mut filter.ebpf)?;
        filter
            .restore_program()?
            .load()
            .map_err(FilterError::Program)?;
        Ok(filter)
    }

    /// The TC egress program that gives answers back their ports.
    fn restore_program(&mut self) -> Result<&mut SchedClassifier, FilterError> {
        self.ebpf
            .program_mut(RESTORE_PROGRAM_NAME)
            .ok_or_else(|| FilterError::MissingProgram(RESTORE_PROGRAM_NAME.to_owned()))?
            .try_into()
            .map_err(FilterError::Program)
    }

    /// Attaches the egress program to `iface` on a TCX link of its own.
    fn attach_egress(&mut self, iface: &str) -> Result<SchedClassifierLinkId, FilterError> {
        let name = CString::new(iface).map_err(|_| FilterError::UnknownInterface(iface.into()))?;
        self.restore_program()?
            .attach(
                name.as_c_str(),
                TcAttach::Tcx {
                    attach_type: TcAttachType::Egress,
                    order: LinkOrder::default(),
                },
            )
            .map_err(|source| FilterError::Egress {
                iface: iface.to_owned(),
                source,
            })
    }

    /// Puts the egress program on `iface` for good, as `install` does the
    /// filter: on the pinned egress link, replacing the program there in
    /// one step, or on a new link, pinned before this returns.
    fn install_egress(&mut self, pins: &PinDir, iface: &str) -> Result<(), FilterError> {
        let link_error = |source: std::io::Error| FilterError::EgressLink {
            iface: iface.to_owned(),
            source,
        };
        let path = pins.egress_link(iface);
        if path.exists() {
            let program = self.restore_program()?;
            let swapped =
                pins::swap_pinned(&path, "egress link", iface, |link: SchedClassifierLink| {
                    program.attach_to_link(link).map(drop)
                })
                .map_err(link_error)?;
            if swapped {
                return Ok(());
            }
        }
        let id = self.attach_egress(iface)?;
        let link = self
            .restore_program()?
            .take_link(id)
            .map_err(FilterError::Program)?;
        let link = FdLink::try_from(link).map_err(|e| link_error(std::io::Error::other(e)))?;
        // On failure the link is dropped, which detaches it.
        link.pin(&path)
            .map_err(|e| link_error(std::io::Error::other(e)))?;
        Ok(())
    }

    /// Has the verifier check the object's XDP program `name`.
    fn load_xdp(&mut self, name: &str) -> Result<&mut Xdp, FilterError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| FilterError::MissingProgram(name.to_owned()))?
            .try_into()
            .map_err(FilterError::Program)?;
        program.load().map_err(FilterError::Program)?;
        Ok(program)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, FilterError> {
        self.ebpf
            .program_mut(knock_common::PROGRAM_NAME)
            .ok_or_else(|| FilterError::MissingProgram(knock_common::PROGRAM_NAME.to_owned()))?
            .try_into()
            .map_err(FilterError::Program)
    }

    /// Attaches to `iface` without pinning (tests and benchmarks: it comes
    /// off when the filter is dropped); returns the mode actually used.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, FilterError> {
        check_interface(iface)?;
        // Answers to what the filter steers get their ports back from the
        // first packet on.
        self.attach_egress(iface)?;
        self.attach_link(iface, mode).map(|(_, mode)| mode)
    }

    /// Attaches in `mode` (`auto`: native, else generic); returns the link.
    fn attach_link(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, AttachMode), FilterError> {
        check_interface(iface)?;
        let name = CString::new(iface).map_err(|_| FilterError::UnknownInterface(iface.into()))?;
        let program = self.program_mut()?;
        let try_mode = |program: &mut Xdp, mode: AttachMode| {
            let xdp_mode = match mode {
                AttachMode::Generic => XdpMode::Skb,
                AttachMode::Native | AttachMode::Auto => XdpMode::Driver,
            };
            program
                .attach(name.as_c_str(), xdp_mode)
                .map(|id| (id, mode))
                .map_err(|source| FilterError::Attach {
                    iface: iface.to_owned(),
                    mode,
                    source,
                })
        };
        match mode {
            AttachMode::Auto => try_mode(program, AttachMode::Native).or_else(|native_error| {
                log::info!(
                    "native XDP is not available on `{iface}` ({native_error}); using generic mode"
                );
                try_mode(program, AttachMode::Generic)
            }),
            mode => try_mode(program, mode),
        }
    }

    /// Puts this program on `iface` for good: on the interface's pinned
    /// link, replacing the program there in one step, or on a new link,
    /// pinned before this returns. Either way the filter stays when this
    /// process ends.
    pub fn install(
        &mut self,
        pins: &PinDir,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Installed, FilterError> {
        check_interface(iface)?;
        // The answers' egress program first: no packet is steered before
        // its answer can get its ports back.
        self.install_egress(pins, iface)?;
        let link_error = |source: std::io::Error| FilterError::Link {
            iface: iface.to_owned(),
            source,
        };
        if let Some(pinned) = pins.links()?.into_iter().find(|l| l.iface == iface) {
            let program = self.program_mut()?;
            let swapped = pins::swap_pinned(&pinned.path, "link", iface, |link: XdpLink| {
                program.attach_to_link(link).map(drop)
            })
            .map_err(link_error)?;
            if swapped {
                return Ok(Installed::Replaced(pinned.mode));
            }
        }
        let (id, used) = self.attach_link(iface, mode)?;
        let link = self
            .program_mut()?
            .take_link(id)
            .map_err(FilterError::Program)?;
        // A netlink attachment (no BPF link) is detached as the conversion fails.
        let link = FdLink::try_from(link).map_err(|_| FilterError::NoPinnableLink {
            iface: iface.to_owned(),
        })?;
        let mode_name = match used {
            AttachMode::Generic => "generic",
            _ => "native",
        };
        // On failure the link is dropped, which detaches it.
        link.pin(pins.link(iface, mode_name))
            .map_err(|e| link_error(std::io::Error::other(e)))?;
        Ok(Installed::Attached(used))
    }

    /// Makes a pinned load official once every link runs it: the rules own
    /// their new indexes, removed rules' state goes, and older generations'
    /// pins are removed.
    pub fn commit(&mut self, pins: &PinDir) -> Result<(), FilterError> {
        let Some(mut pending) = self.pending.take() else {
            return Ok(());
        };
        let mut instance = self.maps.instance()?;
        instance.rules = pending.placement.names;
        instance.generation = pending.generation;
        self.maps.set_instance(&instance)?;
        self.maps.clear_rules(&pending.placement.retired)?;
        let rescoped = self.maps.drop_rescoped_grants(&self.maps.rules()?)?;
        if rescoped > 0 {
            log::warn!(
                "{rescoped} grant(s) made under a grant_scope their rule no longer has were removed; those clients knock again"
            );
        }
        pending.unused.0 = None;
        pins.remove_generations_but(pending.generation)?;
        Ok(())
    }

    /// The rule indexes of each of the configuration's rules.
    pub fn slots(&self) -> &[Vec<u32>] {
        &self.slots
    }

    /// The loaded filter program.
    fn filter_program(&self) -> Result<&Xdp, FilterError> {
        self.ebpf
            .program(knock_common::PROGRAM_NAME)
            .ok_or_else(|| FilterError::MissingProgram(knock_common::PROGRAM_NAME.to_owned()))?
            .try_into()
            .map_err(FilterError::Program)
    }

    /// The kernel's record of the loaded filter program.
    fn filter_info(&self) -> Result<ProgramInfo, FilterError> {
        self.filter_program()?.info().map_err(FilterError::Program)
    }

    /// How many instructions the kernel runs the filter program as
    /// (after the verifier's rewrites).
    pub fn instructions(&self) -> Result<u32, FilterError> {
        Ok(self.filter_info()?.size_translated().unwrap_or(0) / 8)
    }

    /// Each loaded program of the object by name, with how many
    /// instructions the verifier processed to accept it: its measure of a
    /// program's complexity, which it refuses past a million.
    pub fn verifier_work(&self) -> Result<Vec<(String, u32)>, FilterError> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = match program.info() {
                    Ok(info) => info,
                    // Programs this filter does not use are never loaded.
                    Err(ProgramError::NotLoaded) => return None,
                    Err(e) => return Some(Err(FilterError::Program(e))),
                };
                let work = info.verified_instruction_count().unwrap_or(0);
                Some(Ok((name.to_owned(), work)))
            })
            .collect()
    }

    /// The filter program's total run time and runs, as the kernel counts
    /// them while its run-time statistics are on (`aya::sys::enable_stats`);
    /// the time includes the programs it tail-calls.
    pub fn run_stats(&self) -> Result<(Duration, u64), FilterError> {
        let info = self.filter_info()?;
        Ok((info.run_time(), info.run_count()))
    }

    /// The egress program's, as `run_stats` counts the filter's: every
    /// packet the host sent through an interface it is attached to.
    pub fn restore_run_stats(&self) -> Result<(Duration, u64), FilterError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(RESTORE_PROGRAM_NAME)
            .ok_or_else(|| FilterError::MissingProgram(RESTORE_PROGRAM_NAME.to_owned()))?
            .try_into()
            .map_err(FilterError::Program)?;
        let info = program.info().map_err(FilterError::Program)?;
        Ok((info.run_time(), info.run_count()))
    }

    /// The kernel's id of the filter program.
    pub fn program_id(&self) -> Result<u32, FilterError> {
        Ok(self.filter_info()?.id())
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

    /// The filter's maps.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The fd of every map of the object, by name (the typed layer's and
    /// the programs' own), to read what the kernel charges for each.
    #[cfg(feature = "testing")]
    pub fn map_fds(&self) -> std::collections::BTreeMap<String, std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut fds: std::collections::BTreeMap<String, _> = self
            .maps
            .fds()
            .into_iter()
            .map(|(name, fd)| (name.to_owned(), fd))
            .collect();
        for row in TABLE.iter().filter(|row| !row.kind.in_maps()) {
            if let Some(map) = self.ebpf.map(row.name) {
                let fd = maps::map_data(map).fd().as_fd().as_raw_fd();
                fds.insert(row.name.to_owned(), fd);
            }
        }
        fds
    }
}

impl Drop for UnusedGeneration {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            drop(std::fs::remove_dir_all(dir));
        }
    }
}

/// The instance record of a pinned filter, if one is pinned.
pub fn read_instance(pins: &PinDir) -> Result<Option<Instance>, FilterError> {
    let path = pins.map(name::INSTANCE);
    if !path.exists() {
        return Ok(None);
    }
    let maps = Maps::open_instance(&path)?;
    Ok(Some(maps.instance()?))
}

/// The traced object's global naming the traced source (`AddrWords`).
pub const TRACE_SOURCE: &str = "TRACE_SOURCE";

/// Loads every program the filter tail-calls into its slot.
pub fn set_tail_calls(ebpf: &mut Ebpf) -> Result<(), FilterError> {
    for row in TABLE {
        if let Kind::Slot { program } = row.kind {
            set_tail_call(ebpf, program, row.name)?;
        }
    }
    Ok(())
}

/// Loads the traced object's logging program into the slot its filter hands
/// every verdict to.
pub fn set_trace_program(ebpf: &mut Ebpf) -> Result<(), FilterError> {
    set_tail_call(ebpf, "xknock_trace", name::TRACE_PROGRAM)
}

/// Loads XDP program `program` of the object and puts it in slot 0 of the
/// program array `slot`.
fn set_tail_call(ebpf: &mut Ebpf, program: &str, slot: &'static str) -> Result<(), FilterError> {
    let loaded: &mut Xdp = ebpf
        .program_mut(program)
        .ok_or_else(|| FilterError::MissingProgram(program.to_owned()))?
        .try_into()
        .map_err(FilterError::Program)?;
    loaded.load().map_err(FilterError::Program)?;
    let fd = loaded
        .fd()
        .map_err(FilterError::Program)?
        .try_clone()
        .map_err(|error| FilterError::Program(ProgramError::IOError(error)))?;
    let map = ebpf.map_mut(slot).ok_or_else(|| MapsError {
        name: slot,
        source: MapError::InvalidName { name: slot.into() },
    })?;
    let mut slots =
        ProgramArray::try_from(map).map_err(|source| MapsError { name: slot, source })?;
    slots
        .set(0, &fd, 0)
        .map_err(|source| MapsError { name: slot, source }.into())
}

/// A seed for the horizon hash that spoofers cannot guess.
fn random_seed() -> u32 {
    RandomState::new().hash_one(monotonic_ns()) as u32
}

fn load_error(error: aya::EbpfError) -> FilterError {
    match error {
        aya::EbpfError::MapError(MapError::IncompatiblePinnedMap {
            name,
            property,
            expected,
            actual,
        }) => FilterError::PinnedMapChanged {
            key: limit_key(&name),
            map: name,
            property,
            pinned: actual,
            wanted: expected,
        },
        other => FilterError::Load(other),
    }
}

/// A grant made now that lasts `duration`, as the loader plants it
/// (`xknock grant`, an SPA packet).
pub fn grant_from_now(duration: Duration) -> knock_common::Grant {
    let duration_ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    knock_common::Grant::made(monotonic_ns(), duration_ns)
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
