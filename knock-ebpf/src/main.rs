//! The xknock XDP filter: knock sequences open protected ports per source.
//! Its programs are in `programs.rs`, which calls down into the modules of
//! each concern.
//!
//! This object carries no trace code at all: `xknock trace` swaps in the
//! variant `traced.rs` builds from the same modules, for as long as a trace
//! runs.
#![no_std]
// `atomic_xadd`: the BPF target's atomics offer no read-modify-write.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod conceal;
mod events;
mod filter;
mod guard;
mod horizon;
mod knocking;
mod object;
mod parse;
mod programs;
mod restore;
mod settings;
mod spa;
mod verdict;

/// Decisions are not logged in this object.
mod trace {
    use aya_ebpf::programs::XdpContext;
    use knock_common::Reason;

    #[inline(always)]
    pub fn decision(_ctx: &XdpContext, _reason: Reason) {}
}
