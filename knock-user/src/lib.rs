//! xknock's userspace: configuration, the loader of the XDP filter, event
//! decoding and the knock client. The `xknock` binary is a thin CLI on top.

pub mod cli;
pub mod config;
pub mod events;
pub mod filter;
pub mod fwknop;
pub mod host;
pub mod import;
pub mod knock;
pub mod listeners;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod run;
pub mod sent;
pub mod slots;
pub mod spa;
pub mod status;
pub mod trace;
