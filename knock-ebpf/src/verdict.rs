//! The verdict match: from a reason to what happens to the packet.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use knock_common::{CONCEAL_CLOSED, Reason};

use crate::{conceal, settings};

/// What the verdict means for the packet: pass it, or stop it and (with
/// `conceal = "closed"`) hand it to the program that steers it to the
/// host's closed port.
#[inline(always)]
pub fn act(ctx: &XdpContext, reason: Reason) -> u32 {
    if reason.passes() {
        xdp_action::XDP_PASS
    } else {
        if reason.conceals()
            && settings::settings().is_some_and(|settings| settings.conceal == CONCEAL_CLOSED)
        {
            // Does not return when the steering program takes over.
            conceal::hand_over(ctx);
        }
        xdp_action::XDP_DROP
    }
}
