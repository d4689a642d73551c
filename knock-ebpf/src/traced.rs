//! The xknock XDP filter with every decision about one source logged
//! through aya-log: what `xknock trace ADDR` swaps onto the links while it
//! runs. Its programs are the filter's own (`programs.rs`), decision for
//! decision; only its `trace` module differs from `main.rs`'s, and it adds
//! the program that logs.
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
mod trace;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Logs the decision the filter handed over (`trace::decision`) if the
/// packet comes from the traced source, then acts on it as the filter would.
#[xdp]
pub fn xknock_trace(ctx: XdpContext) -> u32 {
    let reason = trace::handed_over();
    trace::log(&ctx, reason);
    verdict::act(&ctx, reason)
}
