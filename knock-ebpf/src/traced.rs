//! The xknock XDP filter with every decision about one source logged
//! through aya-log: what `xknock trace ADDR` swaps onto the links while it
//! runs. Everything else is the filter's own code, decision for decision;
//! only its `trace` module differs from `main.rs`'s.
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
mod settings;
mod spa;
mod trace;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// `main.rs`'s entry point, deciding through the same modules.
#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    let reason = filter::try_xknock(&ctx).unwrap_or_else(|error| error.reason());
    verdict::conclude(&ctx, reason)
}
