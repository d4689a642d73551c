//! xknock's userspace: configuration, the loader of the XDP filter, the
//! daemon that runs it, the operator's commands and the knock client. The
//! `xknock` binary is a thin CLI on top.
//!
//! Calls go down, never up: `cli` and the binary use `daemon`, `admin` and
//! `client`; `daemon` may read `admin::status`; all of them use `loader`,
//! `config` and `fwknop`; `loader` uses `config`; everything uses
//! knock-common.

// Nothing xknock reads from the network, a file or a peer panics it: every
// such path returns an error the operator reads (#25; the fuzz targets
// hold it too), and an invariant that cannot fail says why where it is.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod fwknop;
pub mod import;
pub mod loader;
