//! xknock's userspace: configuration, the loader of the XDP filter, the
//! daemon that runs it, the operator's commands and the knock client. The
//! `xknock` binary is a thin CLI on top.
//!
//! Calls go down, never up: `cli` and the binary use `daemon`, `admin` and
//! `client`; `daemon` may read `admin::status`; all of them use `loader`,
//! `config` and `fwknop`; `loader` uses `config`; everything uses
//! knock-common.

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod fwknop;
pub mod import;
pub mod loader;
