//! Reference XDP programs the benchmarks measure xknock against, and the
//! flood generator they drive it with. Not part of the filter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_get_prandom_u32, macros::xdp,
    programs::XdpContext,
};

/// The floor of per-packet cost: does nothing.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The ceiling of drop rate: drops everything unread.
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Offset of the IPv4 source address in an untagged Ethernet frame.
const IPV4_SRC: usize = 14 + 12;

/// Under BPF_PROG_TEST_RUN live frames: rewrites the IPv4 source address of
/// the template frame to a random one and transmits it.
#[xdp]
pub fn xdp_flood(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IPV4_SRC + 4 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    // SAFETY: the check above keeps the 4 bytes inside the frame; u8
    // writes need no alignment.
    unsafe {
        let src = (start + IPV4_SRC) as *mut [u8; 4];
        *src = random.to_be_bytes();
    }
    xdp_action::XDP_TX
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
