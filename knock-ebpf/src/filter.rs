//! The decision on one packet: parse it, read its port's roles, and hand it
//! to the concern it belongs to (SPA, knocking, the guard of protected
//! ports), or let it pass untouched.

use aya_ebpf::programs::XdpContext;
use knock_common::{IPPROTO_UDP, PortRoles, Reason, STEER_TO_PORT, Settings};

use crate::{
    guard, horizon,
    knocking::{self, KnockHandover},
    parse::{self, Packet, ParseError, Parsed, Transport},
    settings, spa,
};

/// The verdict on one packet, or why it cannot be parsed (which drops it).
#[inline(always)]
pub fn try_xknock(ctx: &XdpContext) -> Result<Reason, ParseError> {
    let l4 = match parse::parse(ctx)? {
        Parsed::NotIp => return Ok(Reason::PassNotIp),
        Parsed::OtherProtocol => return Ok(Reason::PassOtherProtocol),
        Parsed::LaterFragment => return Ok(Reason::PassLaterFragment),
        Parsed::Transport(l4) => l4,
    };
    let echo = l4.is_echo();
    let roles = settings::roles_of(l4.proto, l4.dst_port());
    let opens = l4.opens_connection();
    if !opens && roles.knock_rules == 0 && roles.protect_rules == 0 {
        return Ok(unprotected(&l4));
    }
    let Some(settings) = settings::settings() else {
        return Ok(Reason::PassUnprotected);
    };
    let packet = l4.with_source(ctx)?;
    if roles.spa_rules != 0 && l4.proto == IPPROTO_UDP {
        if guard::denied(settings, &packet.src()) {
            return Ok(Reason::DropDenied);
        }
        return Ok(spa::hand_over(ctx, settings, &packet));
    }
    let slot = horizon::slot(settings, &packet);
    let horizon = horizon::at(slot);
    let knock_port = roles.knock_rules != 0;
    if opens && (knock_port || horizon::covered_now(horizon.knocking_until).is_some()) {
        // Does not return when the knock program takes over.
        let source_hash = horizon::source_hash(settings, &packet);
        knocking::hand_over(
            ctx,
            KnockHandover {
                packet,
                roles,
                slot,
                admitted_until: horizon.admitted_until,
                source_hash,
                warmed: knocking::warm(settings, source_hash, knock_port),
            },
        );
    }
    if echo {
        return Ok(Reason::PassOtherProtocol);
    }
    Ok(beyond_knocks(
        settings,
        &packet,
        roles,
        slot,
        horizon.admitted_until,
    ))
}

/// The verdict on a packet that is no knock step: a knock port stops it, a
/// protected port guards, and any other port lets it pass.
#[inline(always)]
pub fn beyond_knocks(
    settings: &Settings,
    packet: &Packet,
    roles: PortRoles,
    slot: u32,
    admitted_until: u32,
) -> Reason {
    if roles.knock_rules != 0 {
        return Reason::DropKnockPort;
    }
    if roles.protect_rules != 0 {
        return guard::protected(settings, packet, roles.protect_rules, slot, admitted_until);
    }
    unprotected(&packet.l4)
}

/// The verdict on TCP or UDP to a port no rule uses: it passes; to port 0
/// it first has its peer's steered flow cleared (`verdict::act`).
#[inline(always)]
fn unprotected(l4: &Transport) -> Reason {
    if l4.dst_port == STEER_TO_PORT && !l4.is_echo() {
        Reason::PassPortZero
    } else {
        Reason::PassUnprotected
    }
}
