//! `Maps`, the handle on a filter's maps, and what every accessor of it
//! uses: its error, and walks over a hash map's entries.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::OnceLock};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapError, RingBuf},
};
use ipnet::IpNet;
use knock_common::{Addr, GrantKey};

use super::mapped::Mapped;
use crate::loader::{
    pins::PinDir,
    table::{self, name},
};

/// A map is missing, or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("BPF map {name}")]
pub struct MapsError {
    pub name: &'static str,
    #[source]
    pub source: MapError,
}

pub(super) fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { name, source }
}

/// The maps a loaded or pinned filter reads and writes: those of the
/// table that `Kind::in_maps` picks.
pub struct Maps {
    pub(super) maps: BTreeMap<&'static str, Map>,
    /// `SOURCE_HORIZONS` in this process's memory, mapped at first use and
    /// kept: planting a million entries mapped it a million times.
    pub(super) horizons: OnceLock<Mapped>,
    /// `FIRST_STEPS` in this process's memory, likewise.
    pub(super) first_steps: OnceLock<Mapped>,
}

impl Maps {
    pub(super) fn of(maps: BTreeMap<&'static str, Map>) -> Maps {
        Maps {
            maps,
            horizons: OnceLock::new(),
            first_steps: OnceLock::new(),
        }
    }

    /// Map `name` (BPF_F_MMAPABLE), its first `len` bytes mapped into this
    /// process at first use and kept in `cell`.
    pub(super) fn mapped<'a>(
        &self,
        name: &'static str,
        cell: &'a OnceLock<Mapped>,
        len: usize,
    ) -> Result<&'a Mapped, MapsError> {
        if let Some(mapped) = cell.get() {
            return Ok(mapped);
        }
        let mapped = Mapped::map(map_data(self.map(name)?), len).map_err(|io_error| MapsError {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap",
                io_error,
            }),
        })?;
        // Of two threads mapping at once, one mapping stays; the other is
        // unmapped as it drops.
        Ok(cell.get_or_init(|| mapped))
    }

    /// Takes the maps out of a freshly loaded object (the programs keep
    /// their slots and scratch).
    pub fn take(ebpf: &mut Ebpf) -> Maps {
        let maps = table::in_maps()
            .filter_map(|row| Some((row.name, ebpf.take_map(row.name)?)))
            .collect();
        Maps::of(maps)
    }

    /// Opens the maps of a pinned filter: its state, and the configuration
    /// of `generation`.
    #[expect(clippy::expect_used, reason = "every map `Maps` holds has a pin path")]
    pub fn open(pins: &PinDir, generation: u64) -> Result<Maps, MapsError> {
        let mut maps = BTreeMap::new();
        for row in table::in_maps() {
            let path = pins.pin(row, generation).expect("maps of Maps are pinned");
            maps.insert(row.name, open_pinned(row.name, &path)?);
        }
        Ok(Maps::of(maps))
    }

    /// Just the instance record of a pinned filter.
    pub fn open_instance(path: &Path) -> Result<Maps, MapsError> {
        let maps = BTreeMap::from([(name::INSTANCE, open_pinned(name::INSTANCE, path)?)]);
        Ok(Maps::of(maps))
    }

    pub(super) fn map(&self, name: &'static str) -> Result<&Map, MapsError> {
        self.maps.get(name).ok_or_else(|| missing(name))
    }

    pub(super) fn get<'a, T>(&'a self, name: &'static str) -> Result<T, MapsError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        T::try_from(self.map(name)?).map_err(map_error(name))
    }

    pub(super) fn get_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, MapsError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.maps.get_mut(name).ok_or_else(|| missing(name))?;
        T::try_from(map).map_err(map_error(name))
    }

    /// The event ring buffer; the caller owns it from now on.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, MapsError> {
        self.take_ring(name::EVENTS)
    }

    /// The ring of datagrams to SPA ports; the caller owns it from now on.
    pub fn take_spa_datagrams(&mut self) -> Result<RingBuf<MapData>, MapsError> {
        self.take_ring(name::SPA_DATAGRAMS)
    }

    pub(super) fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, MapsError> {
        let map = self.maps.remove(name).ok_or_else(|| missing(name))?;
        RingBuf::try_from(map).map_err(map_error(name))
    }
}

/// Every entry of a hash map.
pub(super) fn entries<K: Pod, V: Pod>(
    map: &HashMap<impl std::borrow::Borrow<MapData>, K, V>,
) -> Vec<(K, V)> {
    // Entries the kernel evicts while we walk are simply not listed.
    map.iter().filter_map(Result::ok).collect()
}

/// Removes the entries of a hash map that `doomed` picks; returns them.
pub(super) fn remove_where<K: Pod, V: Pod>(
    mut map: HashMap<&mut MapData, K, V>,
    doomed: impl Fn(&K, &V) -> bool,
) -> Vec<(K, V)> {
    let gone: Vec<(K, V)> = entries(&map)
        .into_iter()
        .filter(|(k, v)| doomed(k, v))
        .collect();
    for (key, _) in &gone {
        // Gone already (evicted, or removed by the kernel) is fine.
        drop(map.remove(key));
    }
    gone
}

pub(super) fn missing(name: &'static str) -> MapsError {
    MapsError {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    }
}

pub(super) fn open_pinned(name: &'static str, path: &Path) -> Result<Map, MapsError> {
    let data = MapData::from_pin(path).map_err(map_error(name))?;
    Map::from_map_data(data).map_err(map_error(name))
}

/// The data behind any kind of map this filter uses.
#[expect(clippy::unreachable, reason = "the map table holds only these kinds")]
pub fn map_data(map: &Map) -> &MapData {
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

/// The prefix a grant's key admits, as the operator writes it: IPv4 when
/// it is IPv4-mapped (a grant of the address alone is its /32 or /128).
pub fn grant_prefix(key: &GrantKey) -> IpNet {
    scope_prefix(display_addr(&key.addr), key.host_bits())
}

/// The prefix of `addr` that leaves out `host_bits`.
pub fn scope_prefix(addr: IpAddr, host_bits: u32) -> IpNet {
    let full = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let len = u8::try_from(full - host_bits.min(full)).unwrap_or(0);
    IpNet::new(addr, len)
        .unwrap_or_else(|_| IpNet::from(addr))
        .trunc()
}

/// Shows a key address as IPv4 when it is IPv4-mapped.
pub fn display_addr(addr: &Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
