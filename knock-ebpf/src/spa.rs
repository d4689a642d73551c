//! Single Packet Authorization: a datagram to an SPA port is never passed to
//! the host; it is copied, at a rate each CPU bounds, to the loader, which
//! checks it (fwknop's format) and grants what it asks for. The filter
//! itself knows no key: it only moves bytes.

use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use knock_common::{
    EventBudget, REPLAY_ENTRIES, Reason, SPA_MAX_BYTES, SPA_MIN_BYTES, SPA_RING_BYTES, Settings,
    SpaDatagram, UDP_HEADER_LEN,
};

use crate::{
    events::within_budget,
    parse::{Packet, bytes_at},
};

/// Datagrams on their way to the loader.
#[map]
static SPA_DATAGRAMS: RingBuf = RingBuf::with_byte_size(SPA_RING_BYTES, 0);

/// How many datagrams each CPU handed over in the current second.
#[map]
static SPA_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Digests of accepted SPA packets (the loader's replay cache, pinned with
/// the filter's state); never read here.
#[map]
static REPLAY: HashMap<[u8; 32], u64> = HashMap::with_max_entries(REPLAY_ENTRIES, 0);

/// Hands a datagram to an SPA port to the loader, if it may be one and this
/// CPU has budget left; the verdict says which. The datagram itself is
/// always stopped.
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, settings: &Settings, packet: &Packet) -> Reason {
    if !packet.l4.whole {
        return Reason::DropSpaUnfit;
    }
    let header_at = packet.l4.header_at();
    let Ok(header) = bytes_at::<UDP_HEADER_LEN>(ctx, header_at) else {
        return Reason::DropSpaUnfit;
    };
    let udp_len = u64::from(u16::from_be_bytes([header[4], header[5]]));
    // The helper below takes the length only with bounds the verifier has
    // seen checked on the register it gets. Left to itself the compiler
    // checks a 16-bit copy (it knows the value fits), which the verifier
    // cannot tie back; through a volatile read the value is a plain 64-bit
    // one, checked as it is passed.
    // SAFETY: a read of a local variable.
    let len = unsafe { core::ptr::read_volatile(&udp_len) }.wrapping_sub(UDP_HEADER_LEN as u64);
    if len < SPA_MIN_BYTES as u64 || len > SPA_MAX_BYTES as u64 {
        return Reason::DropSpaUnfit;
    }
    // A flood of junk cannot keep the loader (or the ring) busy.
    if !within_budget(&SPA_BUDGET, settings.spa_datagrams_per_sec) {
        return Reason::DropSpaShed;
    }
    let Some(mut entry) = SPA_DATAGRAMS.reserve::<SpaDatagram>(0) else {
        return Reason::DropSpaShed;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the ring's exclusive reservation of a whole
    // `SpaDatagram`; the helper writes at most `len` bytes, and `len` is at
    // most SPA_MAX_BYTES, the size of `payload`. It fails (and the record
    // is discarded) when the packet is shorter than the UDP header says.
    let copied = unsafe {
        (*record).src = packet.src();
        (*record).dst_port = packet.l4.dst_port;
        (*record).len = len as u16;
        (*record).ifindex = (*ctx.ctx).ingress_ifindex;
        bpf_xdp_load_bytes(
            ctx.ctx,
            (header_at + UDP_HEADER_LEN) as u32,
            (*record).payload.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        return Reason::DropSpaUnfit;
    }
    entry.submit(0);
    Reason::DropSpaCopied
}
