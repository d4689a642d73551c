//! Every map of the filter, once: its name, what it is to the loader, the
//! configured limit that sizes it, and its key and value types, written as
//! its kernel static declares them.
//!
//! The rows are written once, in `maps_table!`; each user expands them
//! with a macro of its own: [`TABLE`] and the [`name`] constants here, the
//! typed accessors of `Maps` in `maps/accessors.rs`. The loader (the sizes
//! it loads with, what it pins where, what it reuses), `run`, `status` and
//! `trace` read the table; a test checks it against the BPF objects, map
//! for map. Adding a map takes its kernel static and a row here.

use std::marker::PhantomData;

use aya::{
    Pod,
    maps::{Map, MapError, MapType as BpfMapType},
};
use knock_common::{
    Addr, EventBudget, FirstStepBucket, Flow, FlowKey, Grant, GrantKey, Instance, Penalty,
    PortRoles, Progress, RuleConfig, Settings, SourceHorizon, SourceRule, SpentKey, SteeredSlot,
};

use self::kernel::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf};
pub use crate::config::MapLimit;

/// The table: each row's doc comment, then
/// `NAME: type, kind, size [=> accessor, accessor_mut];`
/// where the type reads as the kernel static's (`aya_ebpf::maps`), the kind
/// is a [`Kind`], and the size is `fixed` (by the kernel static) or
/// `sized(L)`, the configured [`MapLimit`] `L`. The accessors are `Maps`'s,
/// for the maps it holds ([`Kind::in_maps`]) whose types userspace reads
/// ([`TypedMap`]).
///
/// It hands the rows to the macro `$then`; the types' names resolve where
/// that macro is invoked.
macro_rules! maps_table {
    ($then:ident) => {
        $then! {
            /// Sources one step into a sequence, in buckets of one-word
            /// records (BPF_F_MMAPABLE): a spoofed first step displaces
            /// only other first steps.
            FIRST_STEPS: Array<FirstStepBucket>, Kind::State, sized(FirstStepEntries);
            /// Sources further into a sequence.
            PROGRESS: LruHashMap<SourceRule, Progress>, Kind::State, sized(ProgressEntries)
                => progress_map, progress_map_mut;
            /// Sources admitted to a rule, until when.
            GRANTS: LruHashMap<GrantKey, Grant>, Kind::State, sized(GrantEntries)
                => grants_map, grants_map_mut;
            /// Connections admitted by a grant.
            FLOWS: LruHashMap<FlowKey, Flow>, Kind::State, sized(FlowEntries)
                => flows_map, flows_map_mut;
            /// Sources' failed attempts: their windows and penalties.
            PENALTIES: LruHashMap<Addr, Penalty>, Kind::State, sized(PenaltyEntries)
                => penalties_map, penalties_map_mut;
            /// Until when some source of each slot may hold state of each
            /// kind (BPF_F_MMAPABLE).
            SOURCE_HORIZONS: Array<SourceHorizon>, Kind::State, fixed
                => source_horizons_map, source_horizons_map_mut;
            /// Verdicts per CPU, by reason.
            COUNTERS: PerCpuArray<u64>, Kind::State, fixed => counters_map, counters_map_mut;
            /// The per-CPU budget of flood events.
            FLOOD_EVENT_BUDGET: PerCpuArray<EventBudget>, Kind::State, fixed;
            /// The event ring buffer (`run` takes it).
            EVENTS: RingBuf, Kind::State, fixed;
            /// Events the full ring buffer could not take, per CPU.
            LOST_EVENTS: PerCpuArray<u64>, Kind::State, fixed
                => lost_events_map, lost_events_map_mut;
            /// What every loader of the pin directory shares.
            INSTANCE: Array<Instance>, Kind::State, fixed => instance_map, instance_map_mut;
            /// What concealment did per CPU: packets steered to the host,
            /// answers given back their ports.
            ANSWERS: PerCpuArray<u64>, Kind::State, fixed => answers_map, answers_map_mut;
            /// The ports of each flow steered to the host's closed port 0,
            /// in the slot of the port it was steered from, which the
            /// egress program puts back in the host's answers.
            STEERED: Array<SteeredSlot>, Kind::State, fixed
                => steered_map, steered_map_mut;
            /// One-time sequences spent, and when.
            SPENT: LruHashMap<SpentKey, u64>, Kind::State, fixed => spent_map, spent_map_mut;
            /// Datagrams to SPA ports (`run` takes it).
            SPA_DATAGRAMS: RingBuf, Kind::State, fixed;
            /// The per-CPU budget of SPA datagrams.
            SPA_BUDGET: PerCpuArray<EventBudget>, Kind::State, fixed;
            /// Accepted SPA packets' replay keys, remembered until when.
            REPLAY: HashMap<[u8; 32], u64>, Kind::State, fixed => replay_map, replay_map_mut;
            /// The configuration's global settings.
            SETTINGS: Array<Settings>, Kind::Generation, fixed => settings_map, settings_map_mut;
            /// The configuration's rules, by rule index.
            RULES: Array<RuleConfig>, Kind::Generation, fixed => rules_map, rules_map_mut;
            /// What each port is to each rule.
            PORT_ROLES: Array<PortRoles>, Kind::Generation, fixed
                => port_roles_map, port_roles_map_mut;
            /// Prefixes always let through.
            ALLOW: LpmTrie<Addr, u8>, Kind::Generation, sized(AllowList)
                => allow_map, allow_map_mut;
            /// Prefixes always dropped.
            DENY: LpmTrie<Addr, u8>, Kind::Generation, sized(DenyList) => deny_map, deny_map_mut;
            /// Where the filter hands stopped packets to be answered.
            CONCEAL: ProgramArray, Kind::Slot { program: knock_common::CONCEAL_PROGRAM_NAME }, fixed;
            /// Where the filter hands possible knock steps (echo requests
            /// too).
            KNOCK: ProgramArray, Kind::Slot { program: knock_common::KNOCK_PROGRAM_NAME }, fixed;
            /// What the filter hands `xknock_knock` (the program's own
            /// `KnockHandover`).
            KNOCK_HANDOVER: PerCpuArray<[u8; 80]>, Kind::Scratch, fixed;
            /// `xknock_knock`'s verdict, handed back.
            KNOCK_VERDICT: PerCpuArray<u32>, Kind::Scratch, fixed;
            /// The grants `xknock_knock`'s rule loop owes a packet.
            OWED_GRANTS: PerCpuArray<[u8; 32]>, Kind::Scratch, fixed;
            /// Where the traced filter hands every verdict to `xknock_trace`.
            TRACE_PROGRAM: ProgramArray, Kind::Trace, fixed;
            /// The verdict handed to `xknock_trace`.
            TRACE_REASON: PerCpuArray<u32>, Kind::Trace, fixed;
            /// aya-log's ring buffer, which `trace` reads.
            AYA_LOGS: RingBuf, Kind::Trace, fixed;
        }
    };
}
pub(crate) use maps_table;

/// The table's rows as [`TABLE`], and a constant with each map's name.
macro_rules! describe {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $map:ty, $kind:expr, $size:ident $(($limit:ident))?
            $(=> $get:ident, $get_mut:ident)?;
    )+) => {
        /// Each map's name, as its kernel static spells it.
        pub mod name {
            $(
                $(#[doc = $doc])*
                pub const $name: &str = stringify!($name);
            )+
        }

        /// Every map of the filter and of its traced variant.
        pub static TABLE: &[Row] = &[
            $(
                Row {
                    name: name::$name,
                    kind: $kind,
                    limit: $size!($($limit)?),
                    shape: <$map as KernelMap>::SHAPE,
                    keys: <$map as KernelMap>::keys,
                },
            )+
        ];
    };
}

/// A size the configuration sets.
macro_rules! sized {
    ($limit:ident) => {
        Some(MapLimit::$limit)
    };
}

/// A size the kernel static sets.
macro_rules! fixed {
    () => {
        None
    };
}

maps_table!(describe);

/// One map.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub name: &'static str,
    pub kind: Kind,
    /// The configured size, or `None` for the one its kernel static gives.
    pub limit: Option<MapLimit>,
    pub shape: Shape,
    /// How many keys the map holds, for a hash map.
    pub keys: fn(&Map) -> Option<Result<usize, MapError>>,
}

/// What a map is to the loader, which decides where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// State that outlives loaders and configurations: pinned in `maps/`,
    /// taken over by every load.
    State,
    /// One configuration's: pinned in its generation's directory, made anew
    /// by each load.
    Generation,
    /// A program array of one, in which the filter tail-calls `program`:
    /// pinned with its generation. The programs keep it; a traced object
    /// fills one of its own.
    Slot { program: &'static str },
    /// The programs' per-CPU scratch: made anew by each load, never pinned.
    Scratch,
    /// Only the traced object has it: made by each trace, never pinned.
    Trace,
}

impl Kind {
    /// Whether `Maps` holds it: the state and the configuration, which
    /// userspace reads and writes, and which a traced object takes over.
    pub fn in_maps(self) -> bool {
        matches!(self, Kind::State | Kind::Generation)
    }
}

/// A map's type in the kernel, and the sizes of its key and value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub map_type: BpfMapType,
    pub key_size: u32,
    pub value_size: u32,
}

/// The row of map `name`.
pub fn row(name: &str) -> Option<&'static Row> {
    TABLE.iter().find(|row| row.name == name)
}

/// The maps that `Maps` holds.
pub fn in_maps() -> impl Iterator<Item = &'static Row> {
    TABLE.iter().filter(|row| row.kind.in_maps())
}

/// A kind of map, as a kernel static declares it (`kernel::LruHashMap<K, V>`):
/// its [`Shape`].
pub trait KernelMap {
    const SHAPE: Shape;

    /// How many keys `map` holds, for a hash map.
    fn keys(_map: &Map) -> Option<Result<usize, MapError>> {
        None
    }
}

/// A kind of map userspace can read, with the aya type that reads it (its
/// key and value types are `Pod`).
pub trait TypedMap: KernelMap {
    /// The aya map over `T` (`&MapData`, `&mut MapData`).
    type Typed<T>;
}

/// The aya map that reads a map of kind `M`, over `T`.
pub type Typed<M, T> = <M as TypedMap>::Typed<T>;

const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// The kinds of map a kernel static declares, named as `aya_ebpf::maps`
/// names them.
pub mod kernel {
    use super::PhantomData;

    pub struct Array<V>(PhantomData<V>);
    pub struct PerCpuArray<V>(PhantomData<V>);
    pub struct HashMap<K, V>(PhantomData<(K, V)>);
    pub struct LruHashMap<K, V>(PhantomData<(K, V)>);
    pub struct LpmTrie<K, V>(PhantomData<(K, V)>);
    pub struct RingBuf;
    pub struct ProgramArray;
}

impl<V> KernelMap for Array<V> {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::Array,
        key_size: size::<u32>(),
        value_size: size::<V>(),
    };
}

impl<V: Pod> TypedMap for Array<V> {
    type Typed<T> = aya::maps::Array<T, V>;
}

impl<V> KernelMap for PerCpuArray<V> {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::PerCpuArray,
        key_size: size::<u32>(),
        value_size: size::<V>(),
    };
}

impl<V: Pod> TypedMap for PerCpuArray<V> {
    type Typed<T> = aya::maps::PerCpuArray<T, V>;
}

impl<K: Pod, V: Pod> KernelMap for HashMap<K, V> {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::Hash,
        key_size: size::<K>(),
        value_size: size::<V>(),
    };

    fn keys(map: &Map) -> Option<Result<usize, MapError>> {
        Some(aya::maps::HashMap::<_, K, V>::try_from(map).map(|map| map.keys().count()))
    }
}

impl<K: Pod, V: Pod> TypedMap for HashMap<K, V> {
    type Typed<T> = aya::maps::HashMap<T, K, V>;
}

impl<K: Pod, V: Pod> KernelMap for LruHashMap<K, V> {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::LruHash,
        ..HashMap::<K, V>::SHAPE
    };

    fn keys(map: &Map) -> Option<Result<usize, MapError>> {
        HashMap::<K, V>::keys(map)
    }
}

impl<K: Pod, V: Pod> TypedMap for LruHashMap<K, V> {
    type Typed<T> = aya::maps::HashMap<T, K, V>;
}

impl<K, V> KernelMap for LpmTrie<K, V> {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::LpmTrie,
        // The prefix length, then the key.
        key_size: size::<u32>() + size::<K>(),
        value_size: size::<V>(),
    };
}

impl<K: Pod, V: Pod> TypedMap for LpmTrie<K, V> {
    type Typed<T> = aya::maps::LpmTrie<T, K, V>;
}

impl KernelMap for RingBuf {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::RingBuf,
        key_size: 0,
        value_size: 0,
    };
}

impl TypedMap for RingBuf {
    type Typed<T> = aya::maps::RingBuf<T>;
}

impl KernelMap for ProgramArray {
    const SHAPE: Shape = Shape {
        map_type: BpfMapType::ProgramArray,
        key_size: size::<u32>(),
        // A program's fd.
        value_size: size::<u32>(),
    };
}

impl TypedMap for ProgramArray {
    type Typed<T> = aya::maps::ProgramArray<T>;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aya_obj::EbpfSectionKind;
    use knock_common::LAYOUT_VERSION;

    use super::*;
    use crate::loader::{BPF_OBJECT, TRACED_OBJECT, embedded_program};

    /// The maps `object` declares (its globals' sections aside), with
    /// their shapes as (type, key size, value size).
    fn declared(object: &[u8]) -> BTreeMap<String, (u32, u32, u32)> {
        let object = aya_obj::Object::parse(object).expect("a BPF object");
        object
            .maps
            .iter()
            .filter(|(_, map)| {
                matches!(
                    map.section_kind(),
                    EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
                )
            })
            .map(|(name, map)| {
                let shape = (map.map_type(), map.key_size(), map.value_size());
                (name.clone(), shape)
            })
            .collect()
    }

    /// The rows `pick` picks, as `declared` lists maps.
    fn rows(pick: impl Fn(&Row) -> bool) -> BTreeMap<String, (u32, u32, u32)> {
        TABLE
            .iter()
            .filter(|row| pick(row))
            .map(|row| {
                let shape = &row.shape;
                let described = (shape.map_type as u32, shape.key_size, shape.value_size);
                (row.name.to_owned(), described)
            })
            .collect()
    }

    #[test]
    fn the_table_describes_every_map_of_the_objects_and_no_other() {
        assert!(
            embedded_program().is_some(),
            "the table is compared with the XDP objects: test a build that carries them (not XKNOCK_WITHOUT_EBPF=1)"
        );
        assert_eq!(
            declared(BPF_OBJECT),
            rows(|row| row.kind != Kind::Trace),
            "the filter's maps are the table's rows but the trace's own"
        );
        assert_eq!(
            declared(TRACED_OBJECT),
            rows(|_| true),
            "the traced filter's maps are every row of the table"
        );
        let programs = aya_obj::Object::parse(BPF_OBJECT)
            .expect("a BPF object")
            .programs;
        for row in TABLE {
            if let Kind::Slot { program } = row.kind {
                assert!(programs.contains_key(program), "{}: no {program}", row.name);
                assert_eq!(row.shape.map_type, BpfMapType::ProgramArray, "{}", row.name);
            }
        }
    }

    #[test]
    fn names_are_unique_and_sizes_configured_only_for_maps_that_grow() {
        let mut names: Vec<&str> = TABLE.iter().map(|row| row.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a map named twice");
        for row in TABLE.iter().filter(|row| row.limit.is_some()) {
            // `FIRST_STEPS` is the one array: its records are words in
            // buckets, which `Maps` counts itself.
            assert!(
                matches!(
                    row.shape.map_type,
                    BpfMapType::Hash | BpfMapType::LruHash | BpfMapType::LpmTrie
                ) || row.name == name::FIRST_STEPS,
                "{} is sized by the configuration but is not a hash map or trie",
                row.name
            );
        }
    }

    /// What a pinned filter holds, map by map: the pin's directory, its
    /// type, key and value sizes, and whether the configuration sizes it.
    /// A change to any of it is a new pinned layout, as a change of a
    /// pinned type is to `layout_fingerprint` in knock-common.
    #[test]
    fn pinned_layout_fingerprint() {
        let mut pinned: Vec<String> = TABLE
            .iter()
            .filter_map(|row| {
                let dir = match row.kind {
                    Kind::State => "maps",
                    Kind::Generation | Kind::Slot { .. } => "gen",
                    Kind::Scratch | Kind::Trace => return None,
                };
                let shape = &row.shape;
                let size = if row.limit.is_some() {
                    "sized"
                } else {
                    "fixed"
                };
                Some(format!(
                    "{dir}/{}:{}:{}:{}:{size}",
                    row.name, shape.map_type as u32, shape.key_size, shape.value_size
                ))
            })
            .collect();
        pinned.sort_unstable();
        // FNV-1a: the same on every build.
        let fingerprint = pinned
            .join("\n")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        assert_eq!(
            (LAYOUT_VERSION, pinned.len(), fingerprint),
            (9, 24, 0xe138_16dd_0e9f_c113),
            "the pinned layout changed: bump LAYOUT_VERSION and record the new fingerprint\n{}",
            pinned.join("\n")
        );
    }
}
