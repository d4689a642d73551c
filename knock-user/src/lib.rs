//! xknock's userspace: configuration, the loader of the XDP filter, event
//! decoding and the knock client. The `xknock` binary is a thin CLI on top.

pub mod config;
pub mod events;
pub mod filter;
pub mod host;
pub mod knock;
