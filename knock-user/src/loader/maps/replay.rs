//! The replay keys of accepted SPA packets (`REPLAY`): a packet is
//! accepted once, however often it comes.

use aya::maps::MapError;
use knock_common::BPF_NOEXIST;

use super::base::{Maps, MapsError, map_error, remove_where};
use crate::loader::table::name;

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

impl Maps {
    /// Whether an SPA packet with replay key `key` was accepted and is
    /// still remembered.
    pub fn replayed(&self, key: &[u8; 32]) -> Result<bool, MapsError> {
        match self.replay_map()?.get(key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(error) => Err(map_error(name::REPLAY)(error)),
        }
    }

    /// Remembers an accepted SPA packet's replay key until `until` (Unix
    /// seconds), unless it is remembered already.
    pub fn remember_replay(&mut self, key: &[u8; 32], until: u64) -> Result<Remembered, MapsError> {
        match self.replay_map_mut()?.insert(key, &until, BPF_NOEXIST) {
            Ok(()) => Ok(Remembered::Now),
            Err(MapError::SyscallError(error)) => match error.io_error.raw_os_error() {
                Some(libc::EEXIST) => Ok(Remembered::Already),
                Some(libc::E2BIG) => Ok(Remembered::Full),
                _ => Err(map_error(name::REPLAY)(MapError::SyscallError(error))),
            },
            Err(error) => Err(map_error(name::REPLAY)(error)),
        }
    }

    /// Forgets SPA replay keys remembered until before `now` (Unix
    /// seconds); returns how many were forgotten.
    pub fn prune_replays(&mut self, now: u64) -> Result<usize, MapsError> {
        Ok(remove_where(self.replay_map_mut()?, |_, until| *until < now).len())
    }

    /// How many SPA replay keys are remembered.
    pub fn replay_entries(&self) -> Result<usize, MapsError> {
        Ok(self.replay_map()?.keys().count())
    }
}
