//! What lets a packet through to a protected port: the roles a (protocol,
//! port) plays for the rules, a source's grant, and the flows a grant
//! admitted.

use crate::{Addr, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// What a (protocol, port) is to the rules: bit `r` set means rule `r`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRoles {
    /// Rules with this port as one of their knock steps.
    pub knock_rules: u16,
    /// Rules protecting this port.
    pub protect_rules: u16,
    /// SPA entries listening on this (UDP) port.
    pub spa_rules: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<PortRoles>() == 8);

/// `PORT_ROLES` is an array indexed by protocol and port: TCP ports first,
/// then UDP, then ICMP echo payload sizes.
pub const PORT_ROLES_ENTRIES: u32 = 3 * 65536;

/// Index of a (protocol, port) in `PORT_ROLES`; `None` for other protocols.
pub const fn port_roles_index(proto: u8, port: u16) -> Option<u32> {
    match proto {
        IPPROTO_TCP => Some(port as u32),
        IPPROTO_UDP => Some(65536 + port as u32),
        IPPROTO_ICMP => Some(2 * 65536 + port as u32),
        _ => None,
    }
}

/// Value of `GRANTS`: until when (kernel monotonic clock, ns) the source may open
/// new connections to the rule's protected ports, and when it was made (a
/// fleet's revoke undoes what was granted before it, anywhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub expires_ns: u64,
    pub granted_ns: u64,
}
const _: () = assert!(size_of::<Grant>() == 16);

impl Grant {
    /// A grant made at `now` that lasts `duration_ns` (kernel clock).
    pub const fn made(now: u64, duration_ns: u64) -> Grant {
        Grant {
            expires_ns: now.saturating_add(duration_ns),
            granted_ns: now,
        }
    }
}

/// Key of `FLOWS`: one admitted connection, as seen on ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr: Addr,
    /// Network byte order, as on the wire.
    pub src_port: [u8; 2],
    /// Network byte order, as on the wire.
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 24);

impl FlowKey {
    pub const fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.src_port)
    }
    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }
}

/// Value of `FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub last_seen_ns: u64,
    /// The rule whose grant admitted the flow.
    pub rule: u32,
    /// Non-zero once a FIN was seen: the flow then idles out after `tcp_closing_ns`.
    pub closing: u32,
}
const _: () = assert!(size_of::<Flow>() == 16);
