//! The guard of protected ports: admitted flows, grants, and the allow and
//! deny lists. Grants and flows live in maps of their own that only
//! authenticated sources fill, so knock progress from spoofed sources can
//! never evict them.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{LpmTrie, LruHashMap, lpm_trie::Key},
};
use knock_common::{
    Addr, AddrWords, Flow, FlowKey, Grant, GrantKey, IPPROTO_UDP, MAX_RULES, Reason, RuleConfig,
    Settings, TCP_FIN, TCP_RST, addr_words, is_ipv4_mapped,
};

use crate::{
    events,
    horizon::{self, Horizon},
    parse::Packet,
    settings,
};

// Sizes here are defaults; the loader sets the configured ones before loading.
#[map]
static GRANTS: LruHashMap<GrantKey, Grant> = LruHashMap::with_max_entries(8192, 0);
#[map]
static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(65536, 0);
#[map]
static ALLOW: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);
#[map]
static DENY: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);

/// Decides a packet to a protected port: admitted flows, allowlisted sources
/// and live grants pass; everything else (SYNs, stray ACKs, UDP) is dropped.
/// The denylist wins over the allowlist and over grants. A source whose
/// `admitted_until` horizon has passed has no flow or grant of its own:
/// those lookups are skipped (a grant of its prefix has a horizon of its
/// own, see `live_grant`).
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
    if let Some((rule, now)) = live_grant(settings, packet, protect_rules, admitted_now) {
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

/// A rule protecting the packet's port that holds a live grant for its
/// source (or, for a rule with a scope, for the source's prefix), and now:
/// the first rule without a scope that does, else the first scoped one.
/// `own` is now if the source's own admitted horizon covers it. A rule
/// without a scope is looked up only then; a scoped rule only when the
/// horizon of the source's prefix covers now (`prefix_grant`): a source
/// outside every live grant reads no map but `SOURCE_HORIZONS`.
#[inline(always)]
fn live_grant(
    settings: &Settings,
    packet: &Packet,
    protect_rules: u16,
    own: Option<u64>,
) -> Option<(u32, u64)> {
    let protect_rules = u32::from(protect_rules);
    let scoped = protect_rules & settings.scoped_rules;
    if let Some(now) = own {
        let unscoped = protect_rules & !scoped;
        for rule_index in 0..MAX_RULES as u32 {
            if unscoped & (1 << rule_index) == 0 {
                continue;
            }
            let key = GrantKey::masked(&packet.src_words, &[0; 4], rule_index, 0);
            // SAFETY: read-only copy out of a value the lookup just returned.
            if unsafe { GRANTS.get(&key) }.is_some_and(|grant| now < grant.expires_ns) {
                return Some((rule_index, now));
            }
        }
    }
    if scoped == 0 {
        return None;
    }
    // One scoped rule at the port (the usual case): no loop.
    if scoped.is_power_of_two() {
        let index = scoped.trailing_zeros();
        return prefix_grant(settings, &packet.src_words, packet.l4.is_ipv6(), index)
            .map(|now| (index, now));
    }
    scoped_grant(packet, scoped)
}

/// What the search for a grant of a source's prefix reads and finds;
/// shared with the `bpf_loop` callback through a pointer to the stack.
struct ScopedSearch {
    words: AddrWords,
    /// Scoped rules to look at (bit `r`: rule `r`).
    rules: u32,
    ipv6: bool,
    /// The rule found, or `u32::MAX`, and now.
    found: u32,
    now: u64,
}

/// The first of the scoped rules `rules` that holds a live grant of the
/// packet's source's prefix, and now. A loop of its own (`bpf_loop`), so
/// the verifier checks one rule's search once, not once per rule on every
/// path of the programs that decide protected ports.
#[inline(always)]
fn scoped_grant(packet: &Packet, rules: u32) -> Option<(u32, u64)> {
    let mut search = ScopedSearch {
        words: packet.src_words,
        rules,
        ipv6: packet.l4.is_ipv6(),
        found: u32::MAX,
        now: 0,
    };
    // Up to the highest scoped rule: most configurations have one or two.
    let iterations = u32::BITS - rules.leading_zeros();
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `search` outlives the call.
    unsafe {
        bpf_loop(
            iterations,
            scoped_grant_step as *mut c_void,
            (&raw mut search).cast(),
            0,
        )
    };
    (search.found != u32::MAX).then_some((search.found, search.now))
}

/// One rule's search for `bpf_loop`: returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn scoped_grant_step(rule_index: u64, search: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer scoped_grant gave it.
    let search = unsafe { &mut *search.cast::<ScopedSearch>() };
    let rule_index = rule_index as u32;
    if rule_index >= MAX_RULES as u32 || search.rules & (1 << rule_index) == 0 {
        return 0;
    }
    let Some(settings) = settings::settings() else {
        return 0;
    };
    match prefix_grant(settings, &search.words, search.ipv6, rule_index) {
        Some(now) => {
            search.found = rule_index;
            search.now = now;
            1
        }
        None => 0,
    }
}

/// Now, if rule `rule_index` (a scoped one) holds a live grant of the
/// prefix of `words` (IPv6 if `ipv6`) that its scope admits: one read of
/// the prefix's horizon slot, and a lookup only when it is live.
#[inline(always)]
fn prefix_grant(
    settings: &Settings,
    words: &AddrWords,
    ipv6: bool,
    rule_index: u32,
) -> Option<u64> {
    let rule = settings::rule(rule_index)?;
    let key = rule.grant_key(words, ipv6, rule_index);
    let slot = horizon::slot_of(settings, &addr_words(&key.addr), ipv6);
    let now = horizon::covered_now(horizon::at(slot).admitted_until)?;
    // SAFETY: read-only copy out of a value the lookup just returned.
    unsafe { GRANTS.get(&key) }
        .is_some_and(|grant| now < grant.expires_ns)
        .then_some(now)
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

/// Grants `src` rule `rule_index` (`rule`) until `expires_ns`: the prefix
/// of `src` the rule's scope admits (the address alone without one), whose
/// admitted horizon it raises first (else the filter could skip the lookup
/// that finds the grant).
#[inline(always)]
pub fn grant(
    settings: &Settings,
    src: &Addr,
    rule_index: u32,
    rule: &RuleConfig,
    expires_ns: u64,
    now: u64,
) {
    let words = addr_words(src);
    let ipv6 = !is_ipv4_mapped(&words);
    let key = rule.grant_key(&words, ipv6, rule_index);
    let slot = horizon::slot_of(settings, &addr_words(&key.addr), ipv6);
    horizon::raise(settings, slot, Horizon::Admitted, now);
    let grant = Grant {
        expires_ns,
        granted_ns: now,
    };
    let _ = GRANTS.insert(&key, &grant, 0);
}

/// Whether `words` has a grant of rule `rule_index` stored (of its prefix,
/// for a scoped rule), live or expired: what the trace shows.
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn has_grant(words: &AddrWords, ipv6: bool, rule_index: u32) -> bool {
    let Some(rule) = settings::rule(rule_index) else {
        return false;
    };
    // SAFETY: only tests whether the lookup found something.
    unsafe { GRANTS.get(&rule.grant_key(words, ipv6, rule_index)) }.is_some()
}

/// Whether the packet's flow is stored in `FLOWS`, live or idle: what the
/// trace shows.
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn has_flow(packet: &Packet) -> bool {
    // SAFETY: only tests whether the lookup found something.
    unsafe { FLOWS.get(&flow_key(packet)) }.is_some()
}
