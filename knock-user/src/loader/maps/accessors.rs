//! One typed accessor per map that `Maps` holds, made from the map table:
//! `grants_map()` reads `GRANTS` as the `LruHashMap<GrantKey, Grant>` its
//! row (and its kernel static) declares, `grants_map_mut()` writes it.

use aya::maps::MapData;
use knock_common::{
    Addr, Flow, FlowKey, Grant, GrantKey, Instance, Penalty, PortRoles, Progress, RuleConfig,
    Settings, SourceHorizon, SourceRule, SpentKey, SteeredSlot,
};

use super::base::{Maps, MapsError};
use crate::loader::table::{
    Typed,
    kernel::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    maps_table, name,
};

/// The accessors of the rows that name them.
macro_rules! accessors {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $map:ty, $kind:expr, $size:ident $(($limit:ident))?
            $(=> $get:ident, $get_mut:ident)?;
    )+) => {
        /// The maps, typed as the table declares them.
        impl Maps {
            $($(
                #[doc = concat!("`", stringify!($name), "`, to read.")]
                pub fn $get(&self) -> Result<Typed<$map, &MapData>, MapsError> {
                    self.get(name::$name)
                }

                #[doc = concat!("`", stringify!($name), "`, to write.")]
                pub fn $get_mut(&mut self) -> Result<Typed<$map, &mut MapData>, MapsError> {
                    self.get_mut(name::$name)
                }
            )?)+
        }
    };
}

maps_table!(accessors);
