//! Types shared by the XDP program and the `xknock` loader, and the knock
//! state machine both of them (and the host unit tests) run.
//!
//! Every map type is `#[repr(C)]` with explicit padding so the kernel and
//! userspace agree byte for byte; the `const _` assertions pin the sizes.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod machine;
pub mod ratelimit;

mod addr;
mod budget;
mod event;
mod horizon;
mod penalty;

pub use addr::{Addr, AddrWords, addr_words, ipv4_mapped, words_addr};
pub use budget::{BUDGET_CLOCK_INTERVAL, EventBudget};
pub use event::{Event, event_kind, reset_cause};
pub use horizon::{
    HORIZON_UNIT_SHIFT, SOURCE_HORIZON_SLOTS, SourceHorizon, horizon_span, horizon_units,
    ipv4_slot_prefix, ipv4_source_slot, source_slot,
};
pub use penalty::{Penalty, record_failure};

/// Rules per configuration: protected-port and knock-port roles are `u16` bitmasks.
pub const MAX_RULES: usize = 16;
/// Steps per knock sequence.
pub const MAX_STEPS: usize = 16;
/// VLAN tags (802.1Q / 802.1ad) the parser walks before giving up (fail closed).
pub const MAX_VLAN_DEPTH: usize = 2;
/// IPv6 extension headers the parser walks before giving up (fail closed).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Largest offset at which the parser reads a header; keeps offsets provably
/// bounded for the verifier (MTU-sized frames never come near it). A header
/// starting beyond it counts as truncated.
pub const MAX_HEADER_OFFSET: usize = 4096;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// ICMP; as a `Knock::proto`, an echo request of either family (ICMP over
/// IPv4, ICMPv6 over IPv6), whose `port` is its payload size.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Names of the maps in the BPF object, looked up by the loader.
pub mod map_names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const RULES: &str = "RULES";
    pub const PORT_ROLES: &str = "PORT_ROLES";
    pub const FIRST_STEPS: &str = "FIRST_STEPS";
    pub const PROGRESS: &str = "PROGRESS";
    pub const GRANTS: &str = "GRANTS";
    pub const FLOWS: &str = "FLOWS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const FLOOD_EVENT_BUDGET: &str = "FLOOD_EVENT_BUDGET";
    pub const PENALTIES: &str = "PENALTIES";
    pub const ALLOW: &str = "ALLOW";
    pub const DENY: &str = "DENY";
    pub const SOURCE_HORIZONS: &str = "SOURCE_HORIZONS";
    pub const ANSWERS: &str = "ANSWERS";
    pub const ICMP_GLOBAL: &str = "ICMP_GLOBAL";
    pub const ICMP_PEERS: &str = "ICMP_PEERS";
    pub const CONCEAL: &str = "CONCEAL";
    pub const KNOCK: &str = "KNOCK";
    pub const SPENT: &str = "SPENT";
    pub const INSTANCE: &str = "INSTANCE";
    pub const LOST_EVENTS: &str = "LOST_EVENTS";
    pub const SPA_DATAGRAMS: &str = "SPA_DATAGRAMS";
    pub const SPA_BUDGET: &str = "SPA_BUDGET";
    pub const REPLAY: &str = "REPLAY";
}

/// Version of the pinned layout: the maps under a `pin_dir`, their keys,
/// values and sizes. Bump it with any change to a pinned map's type, so a
/// new loader never reinterprets maps an older one left behind (the
/// `layout_fingerprint` test fails until it is bumped).
pub const LAYOUT_VERSION: u32 = 5;

/// Bytes of a rule's name kept in `Instance`.
pub const RULE_NAME_BYTES: usize = 31;

/// A rule's name as the pinned `INSTANCE` keeps it; empty: a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleName {
    pub len: u8,
    pub bytes: [u8; RULE_NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<RuleName>() == 32);

impl RuleName {
    /// `None` when `name` is longer than `RULE_NAME_BYTES`.
    pub fn new(name: &str) -> Option<RuleName> {
        let mut bytes = [0; RULE_NAME_BYTES];
        bytes
            .get_mut(..name.len())?
            .copy_from_slice(name.as_bytes());
        Some(RuleName {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name, or `None` for a free slot (or bytes that are not one).
    pub fn get(&self) -> Option<&str> {
        let bytes = self.bytes.get(..usize::from(self.len))?;
        core::str::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    }
}

/// Index 0 of the pinned `INSTANCE` array: what every loader of one
/// `pin_dir` shares and the XDP program never reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    /// `LAYOUT_VERSION` of the loader that created the maps; zero: fresh.
    pub layout: u32,
    /// `Settings::source_seed`, drawn once: horizons stay where they are
    /// across loads.
    pub source_seed: u32,
    /// Counts the configurations loaded; names their pin directory.
    pub generation: u64,
    /// Which rule owns each rule index. A rule keeps its index across
    /// reloads, so its grants, flows and progress (keyed by index) stay its
    /// own.
    pub rules: [RuleName; MAX_RULES],
}
const _: () = assert!(core::mem::size_of::<Instance>() == 16 + 32 * MAX_RULES);

/// `RuleConfig::sequence_tag` of a sequence: progress stored under another
/// tag belongs to a sequence the rule no longer has, and counts for nothing.
/// Never zero (a free slot's).
pub fn sequence_tag(sequence: &[Knock]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for step in sequence {
        for byte in step.port.to_le_bytes().into_iter().chain([step.proto]) {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
    }
    hash.max(1)
}

/// Name of the XDP program in the BPF object.
pub const PROGRAM_NAME: &str = "xknock";
/// The program that answers stopped packets as closed ports do; the filter
/// tail-calls it through slot 0 of the `CONCEAL` program array.
pub const CONCEAL_PROGRAM_NAME: &str = "xknock_conceal";
/// The program that runs possible knock steps (echo requests too) through
/// the rules; the filter tail-calls it through slot 0 of the `KNOCK`
/// program array.
pub const KNOCK_PROGRAM_NAME: &str = "xknock_knock";

/// One knock step or protected port: a protocol and a port (host byte
/// order); for an ICMP echo request, the size of its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Knock {
    pub port: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or `IPPROTO_ICMP`.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Knock>() == 4);

impl Knock {
    /// A packet of protocol `proto` to `port` (for ICMP, an echo request
    /// with `port` bytes of payload), padding zeroed.
    pub const fn new(proto: u8, port: u16) -> Self {
        Self {
            port,
            proto,
            _pad: 0,
        }
    }
    pub const fn tcp(port: u16) -> Self {
        Self::new(IPPROTO_TCP, port)
    }
    pub const fn udp(port: u16) -> Self {
        Self::new(IPPROTO_UDP, port)
    }
    /// An ICMP or ICMPv6 echo request with `size` bytes of payload.
    pub const fn icmp(size: u16) -> Self {
        Self::new(IPPROTO_ICMP, size)
    }
}

/// Global settings: index 0 of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// How many entries of `RULES` are in use.
    pub rules: u32,
    /// Events a flood can cause (denied attempts, first steps) each CPU may
    /// emit per second.
    pub flood_events_per_sec: u32,
    /// Entries in the `ALLOW` / `DENY` tries; zero skips the lookup.
    pub allow_entries: u32,
    pub deny_entries: u32,
    /// An admitted TCP flow is forgotten after this long without a packet.
    pub tcp_idle_ns: u64,
    /// An admitted TCP flow that has seen a FIN is forgotten after this long.
    pub tcp_closing_ns: u64,
    /// An admitted UDP flow is forgotten after this long without a packet.
    pub udp_idle_ns: u64,
    /// Failed attempts (progress resets) within `penalty_window_ns` that get
    /// a source's knocks ignored for `penalty_ns`; zero disables the penalty.
    pub penalty_failures: u32,
    /// `SourceHorizon::knocking_until` is raised this many horizon units
    /// past now: it covers the longest sequence timeout.
    pub knocking_horizon: u32,
    pub penalty_window_ns: u64,
    pub penalty_ns: u64,
    /// `SourceHorizon::admitted_until` is raised this many horizon units
    /// past now: it covers the longest grant and flow idle time.
    pub admitted_horizon: u32,
    /// Seeds the hash that picks a source's `SOURCE_HORIZONS` slot, so
    /// nobody can aim spoofed sources at a known client's slot.
    pub source_seed: u32,
    /// `CONCEAL_CLOSED` or `CONCEAL_DROP`.
    pub conceal: u32,
    /// The host's ICMP error limits (see `ratelimit`), read from its sysctls
    /// at load: the global rate and burst (zero rate: no global limit) and
    /// the per-peer intervals (zero: no per-peer limit).
    pub icmp_msgs_per_sec: u32,
    pub icmp_msgs_burst: u32,
    pub icmp_ratelimit_ms: u32,
    pub icmpv6_ratelimit_ms: u32,
    /// TTL and hop limit of the host's own packets (`ip_default_ttl`,
    /// the interface's IPv6 `hop_limit`).
    pub ttl: u8,
    pub hop_limit: u8,
    pub _pad: [u8; 2],
    /// SPA datagrams each CPU may hand to the loader per second; the rest
    /// are shed (counted, never passed).
    pub spa_datagrams_per_sec: u32,
    /// `ipv4_slot_prefix(source_seed)`, so that an IPv4 source's slot costs
    /// the filter one round of the hash (`ipv4_source_slot`).
    pub ipv4_slot_prefix: u32,
    /// `SourceHorizon::failing_until` is raised this many horizon units
    /// past now: it covers the penalty window and the penalty.
    pub failing_horizon: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 112);

/// `Settings::conceal`: answer as a closed port of this host answers.
pub const CONCEAL_CLOSED: u32 = 0;
/// `Settings::conceal`: stay silent.
pub const CONCEAL_DROP: u32 = 1;

/// One rule as the kernel sees it; its protected ports live in `PORT_ROLES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleConfig {
    pub sequence: [Knock; MAX_STEPS],
    /// How many entries of `sequence` are in use; zero: a free slot.
    pub steps: u32,
    /// `sequence_tag(sequence)`, stamped on the progress it makes.
    pub sequence_tag: u32,
    pub sequence_timeout_ns: u64,
    pub open_for_ns: u64,
    /// Non-zero: the sequence opens once (a one-time or rotating sequence);
    /// completing it again after that grants nothing (see `SpentKey`).
    pub once: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RuleConfig>() == 4 * MAX_STEPS + 32);

/// Key of the pinned `SPENT` map: a sequence of a rule that has opened once
/// (its value: when, kernel clock). Only completed knocks insert, so no
/// flood can evict an entry; a sequence the loader has since replaced needs
/// none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpentKey {
    pub rule: u32,
    pub sequence_tag: u32,
}
const _: () = assert!(core::mem::size_of::<SpentKey>() == 8);

/// Entries of `SPENT`.
pub const SPENT_ENTRIES: u32 = 4096;

/// The smallest and largest SPA payload fwknop sends (its
/// `MIN_SPA_DATA_SIZE` and `MAX_SPA_PACKET_LEN`); other sizes at an SPA
/// port are not handed to the loader.
pub const SPA_MIN_BYTES: usize = 140;
pub const SPA_MAX_BYTES: usize = 1500;

/// Bytes of the ring that hands SPA datagrams to the loader (about 680 of
/// them at once).
pub const SPA_RING_BYTES: u32 = 1 << 20;

/// Entries of the pinned `REPLAY` map: digests of the SPA packets accepted
/// within their `max_age`. The kernel never touches it; it is pinned with
/// the filter so a restarted loader still refuses what it accepted.
pub const REPLAY_ENTRIES: u32 = 65536;

/// One datagram to an SPA port, as the filter hands it to the loader.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SpaDatagram {
    /// The source address in the one key form.
    pub src: Addr,
    /// Network byte order: the port it was sent to.
    pub dst_port: [u8; 2],
    /// Bytes of `payload` in use (`SPA_MIN_BYTES..=SPA_MAX_BYTES`).
    pub len: u16,
    /// The interface it arrived on.
    pub ifindex: u32,
    pub payload: [u8; SPA_MAX_BYTES],
}
const _: () = assert!(core::mem::size_of::<SpaDatagram>() == 1524);

/// Byte offsets of `SpaDatagram`'s fields, for the loader's safe decode.
pub const SPA_DATAGRAM_HEADER: usize = 24;

impl SpaDatagram {
    /// The source, destination port and payload of a record from the
    /// ring; `None` when it is shorter than its header says.
    pub fn decode(record: &[u8]) -> Option<(Addr, u16, &[u8])> {
        let src: Addr = record.get(..16)?.try_into().ok()?;
        let port = u16::from_be_bytes(record.get(16..18)?.try_into().ok()?);
        let len = u16::from_ne_bytes(record.get(18..20)?.try_into().ok()?) as usize;
        if len > SPA_MAX_BYTES {
            return None;
        }
        let payload = record.get(SPA_DATAGRAM_HEADER..SPA_DATAGRAM_HEADER + len)?;
        Some((src, port, payload))
    }
}

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
const _: () = assert!(core::mem::size_of::<PortRoles>() == 8);

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

/// Key of `FIRST_STEPS`, `PROGRESS` and `GRANTS`: one source's state for one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRule {
    pub addr: Addr,
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRule>() == 20);

/// Value of `FIRST_STEPS` (sources that sent only the first step, the map a
/// spoofed flood can churn) and `PROGRESS` (sources past the first step):
/// how far a source has come through a rule's sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// When the first step arrived (kernel monotonic clock, ns).
    pub started_ns: u64,
    /// Index of the step expected next; steps before it were accepted.
    pub next_step: u32,
    /// The rule's `sequence_tag` when the progress was made.
    pub sequence_tag: u32,
}
const _: () = assert!(core::mem::size_of::<Progress>() == 16);

/// Value of `GRANTS`: until when (kernel monotonic clock, ns) the source may open
/// new connections to the rule's protected ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Grant>() == 8);

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
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);

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
const _: () = assert!(core::mem::size_of::<Flow>() == 16);

/// Per-CPU counters: one slot per verdict reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 or IPv6.
    PassNotIp = 0,
    /// IP, but neither TCP nor UDP (ICMP, ESP, ...).
    PassOtherProtocol,
    /// A non-first fragment: it cannot be reassembled without its first fragment.
    PassLaterFragment,
    /// TCP/UDP to a port that no rule uses.
    PassUnprotected,
    /// To a protected port, from a source with a live grant.
    PassGranted,
    /// To a protected port, part of a flow admitted earlier.
    PassAdmittedFlow,
    /// To a protected port, from an address on the allowlist.
    PassAllowlisted,
    /// An ICMP echo request that was a knock step: it passes, and the host
    /// answers it as it answers every ping.
    PassEchoKnock,
    /// A knock step that advanced a sequence (dropped like every knock).
    DropKnockAdvanced,
    /// A knock step that completed a sequence and created a grant.
    DropKnockGranted,
    /// A retransmitted copy of the step just accepted.
    DropKnockDuplicate,
    /// To a knock port, but no step for this source (dropped: knock ports look filtered).
    DropKnockPort,
    /// To a protected port from a source without a grant or admitted flow.
    DropProtected,
    /// A knock or protected-port packet from an address on the denylist.
    DropDenied,
    /// A knock from a source serving a penalty for repeated failures.
    DropPenalized,
    /// A datagram to an SPA port, handed to the loader to verify.
    DropSpaCopied,
    /// A datagram to an SPA port over the per-CPU rate, or with the
    /// loader's ring full: not looked at.
    DropSpaShed,
    /// A datagram to an SPA port that cannot be an SPA packet: its size is
    /// outside what fwknop sends, or it is a fragment.
    DropSpaUnfit,
    /// Headers truncated or unparsable: fails closed.
    DropMalformed,
    /// More VLAN tags than `MAX_VLAN_DEPTH`.
    DropTooManyVlanTags,
    /// More IPv6 extension headers than `MAX_IPV6_EXT_HEADERS`.
    DropExtHeaderChainTooLong,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropExtHeaderChainTooLong as u32 + 1;
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassOtherProtocol,
        Reason::PassLaterFragment,
        Reason::PassUnprotected,
        Reason::PassGranted,
        Reason::PassAdmittedFlow,
        Reason::PassAllowlisted,
        Reason::PassEchoKnock,
        Reason::DropKnockAdvanced,
        Reason::DropKnockGranted,
        Reason::DropKnockDuplicate,
        Reason::DropKnockPort,
        Reason::DropProtected,
        Reason::DropDenied,
        Reason::DropPenalized,
        Reason::DropSpaCopied,
        Reason::DropSpaShed,
        Reason::DropSpaUnfit,
        Reason::DropMalformed,
        Reason::DropTooManyVlanTags,
        Reason::DropExtHeaderChainTooLong,
    ];

    /// The reason whose number is `code`, if there is one.
    pub fn decode(code: u32) -> Option<Reason> {
        Reason::ALL.get(code as usize).copied()
    }

    pub const fn passes(self) -> bool {
        (self as u32) <= Reason::PassEchoKnock as u32
    }

    /// Stopped at a knock port, a protected port or an SPA port: with
    /// `conceal = "closed"` the sender gets what a closed port would answer.
    pub const fn conceals(self) -> bool {
        (self as u32) >= Reason::DropKnockAdvanced as u32
            && (self as u32) <= Reason::DropSpaUnfit as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassOtherProtocol => "pass_other_protocol",
            Reason::PassLaterFragment => "pass_later_fragment",
            Reason::PassUnprotected => "pass_unprotected",
            Reason::PassGranted => "pass_granted",
            Reason::PassAdmittedFlow => "pass_admitted_flow",
            Reason::PassAllowlisted => "pass_allowlisted",
            Reason::PassEchoKnock => "pass_echo_knock",
            Reason::DropKnockAdvanced => "drop_knock_advanced",
            Reason::DropKnockGranted => "drop_knock_granted",
            Reason::DropKnockDuplicate => "drop_knock_duplicate",
            Reason::DropKnockPort => "drop_knock_port",
            Reason::DropProtected => "drop_protected",
            Reason::DropDenied => "drop_denied",
            Reason::DropPenalized => "drop_penalized",
            Reason::DropSpaCopied => "drop_spa_copied",
            Reason::DropSpaShed => "drop_spa_shed",
            Reason::DropSpaUnfit => "drop_spa_unfit",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropTooManyVlanTags => "drop_too_many_vlan_tags",
            Reason::DropExtHeaderChainTooLong => "drop_ext_header_chain_too_long",
        }
    }
}

/// Per-CPU counters of what concealment did with a packet it stopped
/// (`ANSWERS`, one slot each; none move with `conceal = "drop"`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A TCP RST sent back, as to a closed port.
    Rst = 0,
    /// An ICMP or ICMPv6 port unreachable sent back.
    Unreachable,
    /// No port unreachable: the host's ICMP rate limit had run out.
    RateLimited,
    /// No answer: the probe's checksum was wrong, and the kernel drops those.
    BadChecksum,
    /// No answer, as from the kernel: an RST, a fragment, a broadcast or
    /// multicast, a martian source, a truncated or inconsistent header.
    Unanswerable,
}

impl Answer {
    pub const COUNT: u32 = Answer::Unanswerable as u32 + 1;
    pub const ALL: [Answer; Answer::COUNT as usize] = [
        Answer::Rst,
        Answer::Unreachable,
        Answer::RateLimited,
        Answer::BadChecksum,
        Answer::Unanswerable,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Answer::Rst => "answer_rst",
            Answer::Unreachable => "answer_unreachable",
            Answer::RateLimited => "silent_rate_limited",
            Answer::BadChecksum => "silent_bad_checksum",
            Answer::Unanswerable => "silent_unanswerable",
        }
    }
}

/// The IPv6 flow label of an answer from `dst` back to `src`: a seeded
/// hash of the flow, 20 bits, never zero, as the kernel's automatic flow
/// labels are (the same flow always gets the same label).
#[inline(always)]
pub fn flow_label(seed: u32, src: &AddrWords, dst: &AddrWords, ports: u32) -> u32 {
    let words = [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], ports,
    ];
    let mut hash = seed ^ 0x5bd1_e995;
    let mut i = 0;
    while i < words.len() {
        hash = (hash ^ words[i]).wrapping_mul(0x9e37_79b1);
        hash ^= hash >> 15;
        i += 1;
    }
    let label = hash & 0x000f_ffff;
    if label == 0 { 1 } else { label }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers and byte
    // arrays with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::Knock {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::SourceHorizon {}
    unsafe impl aya::Pod for super::RuleConfig {}
    unsafe impl aya::Pod for super::PortRoles {}
    unsafe impl aya::Pod for super::SourceRule {}
    unsafe impl aya::Pod for super::Progress {}
    unsafe impl aya::Pod for super::Grant {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Penalty {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Instance {}
    unsafe impl aya::Pod for super::SpentKey {}
    unsafe impl aya::Pod for super::ratelimit::GlobalIcmpBudget {}
    unsafe impl aya::Pod for super::ratelimit::PeerIcmpRate {}
}

#[cfg(test)]
mod spa_datagram_tests {
    use super::*;

    fn record(len: u16, total: usize) -> [u8; 1524] {
        let mut bytes = [0u8; 1524];
        bytes[..16].copy_from_slice(&ipv4_mapped([192, 0, 2, 7]));
        bytes[16..18].copy_from_slice(&62201u16.to_be_bytes());
        bytes[18..20].copy_from_slice(&len.to_ne_bytes());
        for (i, b) in bytes[SPA_DATAGRAM_HEADER..total].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    #[test]
    fn decode_reads_the_header_and_only_the_payload_in_use() {
        let bytes = record(200, 1524);
        let (src, port, payload) = SpaDatagram::decode(&bytes).expect("decodes");
        assert_eq!(src, ipv4_mapped([192, 0, 2, 7]));
        assert_eq!(port, 62201);
        assert_eq!(payload.len(), 200);
        assert_eq!(payload[199], 199);
    }

    #[test]
    fn decode_refuses_lengths_beyond_the_record() {
        let bytes = record(1501, 1524);
        assert!(SpaDatagram::decode(&bytes).is_none());
        let short = record(200, 1524);
        assert!(SpaDatagram::decode(&short[..SPA_DATAGRAM_HEADER + 199]).is_none());
        assert!(SpaDatagram::decode(&short[..10]).is_none());
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use core::mem::size_of;

    /// The sizes of everything pinned, recorded with the layout version
    /// they belong to: a change here without a new `LAYOUT_VERSION` would
    /// have a new loader misread an older loader's maps.
    #[test]
    fn layout_fingerprint() {
        let sizes = [
            size_of::<SourceRule>(),
            size_of::<Progress>(),
            size_of::<Grant>(),
            size_of::<FlowKey>(),
            size_of::<Flow>(),
            size_of::<Penalty>(),
            size_of::<SourceHorizon>(),
            size_of::<EventBudget>(),
            size_of::<Event>(),
            size_of::<Instance>(),
            size_of::<ratelimit::GlobalIcmpBudget>(),
            size_of::<ratelimit::PeerIcmpRate>(),
            Reason::COUNT as usize,
            Answer::COUNT as usize,
            MAX_RULES,
            SOURCE_HORIZON_SLOTS as usize,
            size_of::<SpentKey>(),
            SPENT_ENTRIES as usize,
            size_of::<SpaDatagram>(),
            SPA_RING_BYTES as usize,
            REPLAY_ENTRIES as usize,
        ];
        assert_eq!(
            (LAYOUT_VERSION, sizes),
            (
                5,
                [
                    20,
                    16,
                    8,
                    24,
                    16,
                    24,
                    16,
                    16,
                    32,
                    528,
                    8,
                    8,
                    21,
                    5,
                    16,
                    65536,
                    8,
                    4096,
                    1524,
                    1 << 20,
                    65536
                ]
            ),
            "a pinned type changed: bump LAYOUT_VERSION and record the new sizes"
        );
    }

    #[test]
    fn knock_new_is_what_the_named_constructors_build() {
        assert_eq!(Knock::new(IPPROTO_TCP, 22), Knock::tcp(22));
        assert_eq!(Knock::new(IPPROTO_UDP, 53), Knock::udp(53));
        assert_eq!(Knock::new(IPPROTO_ICMP, 64), Knock::icmp(64));
        assert_eq!(Knock::new(IPPROTO_UDP, 53)._pad, 0);
    }

    #[test]
    fn rule_names_fit_or_are_refused() {
        let name = RuleName::new("ssh").expect("fits");
        assert_eq!(name.get(), Some("ssh"));
        assert_eq!(RuleName::default().get(), None);
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES)).is_some());
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES + 1)).is_none());
    }

    #[test]
    fn every_reason_decodes_from_its_number_and_nothing_past_them() {
        for reason in Reason::ALL {
            assert_eq!(Reason::decode(reason as u32), Some(reason));
        }
        assert_eq!(Reason::decode(Reason::COUNT), None);
        assert_eq!(Reason::decode(u32::MAX), None);
    }
}
