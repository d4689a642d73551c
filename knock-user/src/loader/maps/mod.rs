//! The one typed layer over the filter's maps: `run`, `status`, `grant`,
//! `revoke`, the tests and the bench all read and write the kernel's state
//! through it, whether the maps come from a program just loaded or from the
//! pins of a filter no process holds.
//!
//! Which maps it holds, and their types, come from the map table
//! (`loader::table`): one typed accessor per map (`accessors.rs`), and
//! what the daemon and the operator do with them by concern: the knock
//! state and grants (`state.rs`), the sources' horizons (`horizons.rs`),
//! the configuration (`configuration.rs`), the counters (`counters.rs`),
//! the SPA replay keys (`replay.rs`), and what only tests and the bench do
//! (`testing.rs`).

mod accessors;
mod configuration;
mod counters;
mod horizons;
mod replay;
mod state;
#[cfg(feature = "testing")]
mod testing;

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::OnceLock};

use aya::{
    Ebpf, Pod,
    maps::{HashMap, Map, MapData, MapError, RingBuf},
};
use knock_common::Addr;

use self::horizons::MappedHorizons;
pub use self::{counters::Occupancy, replay::Remembered, state::ExpiredGrant};
use super::{
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

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { name, source }
}

/// The maps a loaded or pinned filter reads and writes: those of the
/// table that `Kind::in_maps` picks.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
    /// `SOURCE_HORIZONS` in this process's memory, mapped at first use and
    /// kept: planting a million entries mapped it a million times.
    horizons: OnceLock<MappedHorizons>,
}

impl Maps {
    fn of(maps: BTreeMap<&'static str, Map>) -> Maps {
        Maps {
            maps,
            horizons: OnceLock::new(),
        }
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

    fn map(&self, name: &'static str) -> Result<&Map, MapsError> {
        self.maps.get(name).ok_or_else(|| missing(name))
    }

    fn get<'a, T>(&'a self, name: &'static str) -> Result<T, MapsError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        T::try_from(self.map(name)?).map_err(map_error(name))
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
        self.take_ring(name::EVENTS)
    }

    /// The ring of datagrams to SPA ports; the caller owns it from now on.
    pub fn take_spa_datagrams(&mut self) -> Result<RingBuf<MapData>, MapsError> {
        self.take_ring(name::SPA_DATAGRAMS)
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, MapsError> {
        let map = self.maps.remove(name).ok_or_else(|| missing(name))?;
        RingBuf::try_from(map).map_err(map_error(name))
    }
}

/// Every entry of a hash map.
fn entries<K: Pod, V: Pod>(map: &HashMap<impl std::borrow::Borrow<MapData>, K, V>) -> Vec<(K, V)> {
    // Entries the kernel evicts while we walk are simply not listed.
    map.iter().filter_map(Result::ok).collect()
}

/// Removes the entries of a hash map that `doomed` picks; returns them.
fn remove_where<K: Pod, V: Pod>(
    mut map: HashMap<&mut MapData, K, V>,
    doomed: impl Fn(&K, &V) -> bool,
) -> Vec<(K, V)> {
    let gone: Vec<(K, V)> = entries(&map)
        .into_iter()
        .filter(|(k, v)| doomed(k, v))
        .collect();
    for (key, _) in &gone {
        // Gone already (evicted, or removed by the kernel) is fine.
        let _ = map.remove(key);
    }
    gone
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

/// The data behind any kind of map this filter uses.
pub(crate) fn map_data(map: &Map) -> &MapData {
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
