//! The guard of protected ports: admitted flows, grants, and the allow and
//! deny lists. Grants and flows live in maps of their own that only
//! authenticated sources fill, so knock progress from spoofed sources can
//! never evict them.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, LruHashMap, lpm_trie::Key},
};
use knock_common::{
    Addr, Flow, FlowKey, Grant, IPPROTO_UDP, MAX_RULES, Reason, Settings, SourceRule, TCP_FIN,
    TCP_RST,
};

use crate::{
    events,
    horizon::{self, Horizon},
    parse::Packet,
};

// Sizes here are defaults; the loader sets the configured ones before loading.
#[map]
static GRANTS: LruHashMap<SourceRule, Grant> = LruHashMap::with_max_entries(8192, 0);
#[map]
static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(65536, 0);
#[map]
static ALLOW: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);
#[map]
static DENY: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);

/// Decides a packet to a protected port: admitted flows, allowlisted sources
/// and live grants pass; everything else (SYNs, stray ACKs, UDP) is dropped.
/// The denylist wins over the allowlist and over grants. A source whose
/// `admitted_until` horizon has passed has no flow or grant: its lookups are
/// skipped.
#[inline(always)]
pub fn protected(
    settings: &Settings,
    packet: &Packet,
    protect_rules: u16,
    slot: u32,
    admitted_until: u32,
) -> Reason {
    let admitted_now = horizon::covered_now(admitted_until);
    if let Some(now) = admitted_now
        && admitted_flow(settings, packet, &flow_key(packet), now)
    {
        horizon::raise(settings, slot, Horizon::Admitted, now);
        return Reason::PassAdmittedFlow;
    }
    if denied(settings, &packet.src()) {
        return Reason::DropDenied;
    }
    if listed(&ALLOW, settings.allow_entries, &packet.src()) {
        return Reason::PassAllowlisted;
    }
    if let Some(now) = admitted_now
        && let Some(rule) = live_grant(packet, protect_rules, now)
    {
        if packet.l4.opens_connection() {
            let flow = Flow {
                last_seen_ns: now,
                rule,
                closing: 0,
            };
            let _ = FLOWS.insert(&flow_key(packet), &flow, 0);
        }
        horizon::raise(settings, slot, Horizon::Admitted, now);
        return Reason::PassGranted;
    }
    events::denied(settings, packet);
    Reason::DropProtected
}

/// The key of the packet's flow in `FLOWS`.
#[inline(always)]
fn flow_key(packet: &Packet) -> FlowKey {
    FlowKey {
        addr: packet.src(),
        src_port: packet.src_port,
        dst_port: packet.l4.dst_port,
        proto: packet.l4.proto,
        _pad: [0; 3],
    }
}

/// Whether the packet belongs to a live admitted flow; updates the flow
/// (last seen, FIN, RST) and forgets it once idle.
#[inline(always)]
fn admitted_flow(settings: &Settings, packet: &Packet, flow_key: &FlowKey, now: u64) -> bool {
    let Some(flow) = FLOWS.get_ptr_mut(flow_key) else {
        return false;
    };
    // SAFETY: a value pointer the map lookup just returned.
    let flow = unsafe { &mut *flow };
    let idle_ns = if packet.l4.proto == IPPROTO_UDP {
        settings.udp_idle_ns
    } else if flow.closing != 0 {
        settings.tcp_closing_ns
    } else {
        settings.tcp_idle_ns
    };
    // A SYN on a closing flow is a new connection reusing the port: it
    // needs a grant of its own.
    let reopens = flow.closing != 0 && packet.l4.opens_connection();
    if now.wrapping_sub(flow.last_seen_ns) > idle_ns || reopens {
        let _ = FLOWS.remove(flow_key);
        return false;
    }
    flow.last_seen_ns = now;
    if packet.l4.tcp_flags & TCP_RST != 0 {
        let _ = FLOWS.remove(flow_key);
    } else if packet.l4.tcp_flags & TCP_FIN != 0 {
        flow.closing = 1;
    }
    true
}

/// The first rule protecting the packet's port that holds a live grant for
/// its source.
#[inline(always)]
fn live_grant(packet: &Packet, protect_rules: u16, now: u64) -> Option<u32> {
    for rule_index in 0..MAX_RULES as u32 {
        if protect_rules & (1 << rule_index) == 0 {
            continue;
        }
        let key = SourceRule {
            addr: packet.src(),
            rule: rule_index,
        };
        // SAFETY: read-only copy out of a value the lookup just returned.
        if unsafe { GRANTS.get(&key) }.is_some_and(|grant| now < grant.expires_ns) {
            return Some(rule_index);
        }
    }
    None
}

/// Whether `addr` is in the denylist: never admitted, its knocks ignored.
#[inline(always)]
pub fn denied(settings: &Settings, addr: &Addr) -> bool {
    listed(&DENY, settings.deny_entries, addr)
}

/// Whether `addr` falls in a prefix of an allow or deny trie.
#[inline(always)]
fn listed(list: &LpmTrie<Addr, u8>, entries: u32, addr: &Addr) -> bool {
    entries != 0 && list.get(&Key::new(128, *addr)).is_some()
}

/// Grants `key` (a source and a rule) until `expires_ns`.
#[inline(always)]
pub fn grant(key: &SourceRule, expires_ns: u64, now: u64) {
    let grant = Grant {
        expires_ns,
        granted_ns: now,
    };
    let _ = GRANTS.insert(key, &grant, 0);
}

/// Whether `key` (a source and a rule) has a grant stored, live or expired:
/// what the trace shows.
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn has_grant(key: &SourceRule) -> bool {
    // SAFETY: only tests whether the lookup found something.
    unsafe { GRANTS.get(key) }.is_some()
}

/// Whether the packet's flow is stored in `FLOWS`, live or idle: what the
/// trace shows.
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn has_flow(packet: &Packet) -> bool {
    // SAFETY: only tests whether the lookup found something.
    unsafe { FLOWS.get(&flow_key(packet)) }.is_some()
}
