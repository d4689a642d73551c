//! Types shared by the XDP program and the `xknock` loader, and the knock
//! state machine both of them (and the host unit tests) run.
//!
//! Every map type is `#[repr(C)]` with explicit padding so the kernel and
//! userspace agree byte for byte; the `const _` assertions pin the sizes.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod machine;
pub mod ratelimit;

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
pub const LAYOUT_VERSION: u32 = 4;

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
    pub const fn tcp(port: u16) -> Self {
        Self {
            port,
            proto: IPPROTO_TCP,
            _pad: 0,
        }
    }
    pub const fn udp(port: u16) -> Self {
        Self {
            port,
            proto: IPPROTO_UDP,
            _pad: 0,
        }
    }
    /// An ICMP or ICMPv6 echo request with `size` bytes of payload.
    pub const fn icmp(size: u16) -> Self {
        Self {
            port: size,
            proto: IPPROTO_ICMP,
            _pad: 0,
        }
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
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 104);

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

/// A source address: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// Maps an IPv4 address into the one key form.
pub const fn ipv4_mapped(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
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

/// Value of `PENALTIES` (keyed by source address): recent failures.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Penalty {
    /// When the current counting window began.
    pub window_start_ns: u64,
    /// Knocks from the source are ignored until then.
    pub ignored_until_ns: u64,
    /// Failures counted in the current window.
    pub failures: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Penalty>() == 24);

/// Records one failure at `now_ns`; returns true when it starts a penalty.
/// Shared by the XDP program and the host tests.
#[inline(always)]
pub fn record_failure(settings: &Settings, penalty: &mut Penalty, now_ns: u64) -> bool {
    if now_ns.wrapping_sub(penalty.window_start_ns) > settings.penalty_window_ns {
        penalty.window_start_ns = now_ns;
        penalty.failures = 0;
    }
    penalty.failures += 1;
    if settings.penalty_failures == 0 || penalty.failures < settings.penalty_failures {
        return false;
    }
    penalty.failures = 0;
    penalty.window_start_ns = now_ns;
    penalty.ignored_until_ns = now_ns + settings.penalty_ns;
    true
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

/// `Event::kind` values.
pub mod event_kind {
    /// A step was accepted; `step` is its 1-based number.
    pub const PROGRESS: u8 = 1;
    /// Progress was thrown away; `detail` is a `reset_cause`.
    pub const RESET: u8 = 2;
    /// The last step was accepted; `expires_ns` says until when.
    pub const GRANT: u8 = 3;
    /// A packet to a protected port was dropped (rate limited).
    pub const DENIED: u8 = 4;
    /// A source failed too often; `expires_ns` says until when its knocks
    /// are ignored.
    pub const PENALIZED: u8 = 5;
}

/// `Event::detail` values for `event_kind::RESET`.
pub mod reset_cause {
    /// Another TCP SYN or UDP datagram arrived mid-sequence.
    pub const WRONG_PACKET: u8 = 1;
    /// The sequence was not completed within the rule's timeout.
    pub const TIMEOUT: u8 = 2;
    /// The sequence opens once, and it already has.
    pub const SPENT: u8 = 3;
}

/// One record on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub addr: Addr,
    /// Kernel monotonic clock (ns); for grants, when they expire.
    pub expires_ns: u64,
    pub kind: u8,
    pub detail: u8,
    /// The packet's protocol and destination port (host byte order).
    pub proto: u8,
    /// 1-based step number for progress events.
    pub step: u8,
    pub port: u16,
    /// Rule index, or `u16::MAX` when not about one rule.
    pub rule: u16,
}
const _: () = assert!(core::mem::size_of::<Event>() == 32);

/// Slots in `SOURCE_HORIZONS`; a power of two.
pub const SOURCE_HORIZON_SLOTS: u32 = 1 << 16;
/// Horizons count in units of 2^30 ns (about 1.07 s), so they fit a `u32`.
pub const HORIZON_UNIT_SHIFT: u32 = 30;

/// Value of `SOURCE_HORIZONS`, an array indexed by `source_slot`: until when
/// (in horizon units of the kernel's monotonic clock) a source hashing to
/// this slot may hold knock progress, or a grant or an admitted flow. Zero
/// means never.
///
/// The XDP program only ever raises these, whenever it creates or uses such
/// state, so a horizon in the past proves that no source hashing here has
/// any, and a packet from a spoofed source skips the map lookups. A source
/// that shares a live slot just takes the full path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceHorizon {
    pub knocking_until: u32,
    pub admitted_until: u32,
}
const _: () = assert!(core::mem::size_of::<SourceHorizon>() == 8);

/// A kernel clock reading in horizon units.
#[inline(always)]
pub const fn horizon_units(ns: u64) -> u32 {
    (ns >> HORIZON_UNIT_SHIFT) as u32
}

/// How far past now a horizon is raised to cover state living `lifetime_ns`:
/// rounded up, plus one unit for the truncation of now and one for two CPUs
/// raising the same slot at once (the later write may carry the earlier now).
pub const fn horizon_span(lifetime_ns: u64) -> u32 {
    let units = lifetime_ns.div_ceil(1 << HORIZON_UNIT_SHIFT) + 2;
    if units > u32::MAX as u64 / 2 {
        u32::MAX / 2
    } else {
        units as u32
    }
}

/// An address as four native-order words with its bytes unchanged: how the
/// XDP program carries and hashes it (four registers, not sixteen bytes).
pub type AddrWords = [u32; 4];

#[inline(always)]
pub const fn addr_words(addr: &Addr) -> AddrWords {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

#[inline(always)]
pub const fn words_addr(words: &AddrWords) -> Addr {
    // SAFETY: the same size, and every bit pattern is a valid byte array.
    // (A copy, where building the bytes one by one would have the compiler
    // split the words into sixteen values.)
    unsafe { core::mem::transmute::<AddrWords, Addr>(*words) }
}

/// Index of a source's slot in `SOURCE_HORIZONS`: a seeded multiplicative
/// hash of its address words, top bits.
#[inline(always)]
pub fn source_slot(words: &AddrWords, seed: u32) -> u32 {
    const _: () = assert!(SOURCE_HORIZON_SLOTS.is_power_of_two());
    let mut hash = seed;
    for word in *words {
        hash = (hash ^ word).wrapping_mul(0x9e37_79b1);
    }
    hash >> (32 - SOURCE_HORIZON_SLOTS.trailing_zeros())
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

/// Rate limit state for the events a flood can cause, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub used: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);

/// Once over budget, the clock is read on every this many candidates only,
/// so a flood does not pay for it per packet; a new window may start that
/// many candidates late.
pub const BUDGET_CLOCK_INTERVAL: u32 = 64;

impl EventBudget {
    /// Whether one more event a flood can cause may go out: at most `limit`
    /// per window, and a window lasts at least a second. `now` (the clock,
    /// in ns) is called when a window starts, and then only on every
    /// `BUDGET_CLOCK_INTERVAL`th candidate over the limit.
    #[inline(always)]
    pub fn admit(&mut self, limit: u32, mut now: impl FnMut() -> u64) -> bool {
        // `used` counts every candidate since the window began, so the
        // common case is one increment and one comparison.
        let seen = self.used;
        self.used = seen.wrapping_add(1);
        if seen == 0 {
            self.window_start_ns = now();
        }
        if seen < limit {
            return true;
        }
        if !(seen - limit).is_multiple_of(BUDGET_CLOCK_INTERVAL) {
            return false;
        }
        let now = now();
        if now.wrapping_sub(self.window_start_ns) < 1_000_000_000 {
            return false;
        }
        self.window_start_ns = now;
        self.used = 1;
        limit > 0
    }
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
mod penalty_tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn settings(failures: u32) -> Settings {
        Settings {
            penalty_failures: failures,
            penalty_window_ns: 60 * SECOND,
            penalty_ns: 300 * SECOND,
            ..Settings::default()
        }
    }

    #[test]
    fn the_nth_failure_within_the_window_starts_a_penalty() {
        let settings = settings(3);
        let mut penalty = Penalty::default();
        assert!(!record_failure(&settings, &mut penalty, 100 * SECOND));
        assert!(!record_failure(&settings, &mut penalty, 110 * SECOND));
        assert!(record_failure(&settings, &mut penalty, 120 * SECOND));
        assert_eq!(penalty.ignored_until_ns, 420 * SECOND);
        assert_eq!(penalty.failures, 0, "the count starts over after a penalty");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_add_up() {
        let settings = settings(3);
        let mut penalty = Penalty::default();
        for minute in 1..10 {
            assert!(!record_failure(
                &settings,
                &mut penalty,
                minute * 61 * SECOND
            ));
        }
        assert_eq!(penalty.ignored_until_ns, 0);
    }

    #[test]
    fn zero_failures_turns_the_penalty_off() {
        let settings = settings(0);
        let mut penalty = Penalty::default();
        for second in 0..100 {
            assert!(!record_failure(&settings, &mut penalty, second * SECOND));
        }
    }
}

#[cfg(test)]
mod horizon_tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_horizon_outlives_the_state_even_when_a_racing_write_loses_a_unit() {
        for lifetime in [SECOND / 2, 10 * SECOND, 24 * 3600 * SECOND] {
            for start in [0, 1, (1 << HORIZON_UNIT_SHIFT) - 1, 123_456_789_012_345] {
                let last_live = start + lifetime;
                let until = horizon_units(start) + horizon_span(lifetime) - 1;
                assert!(
                    until > horizon_units(last_live),
                    "lifetime {lifetime} from {start}: horizon {until} ends before the state"
                );
            }
        }
    }

    #[test]
    fn words_keep_the_address_bytes() {
        let addr = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        assert_eq!(words_addr(&addr_words(&addr)), addr);
    }

    #[test]
    fn spans_of_absurd_lifetimes_stay_far_from_wrapping() {
        assert_eq!(horizon_span(u64::MAX), u32::MAX / 2);
    }

    #[test]
    fn sources_spread_over_the_slots_and_the_seed_moves_them() {
        let sources = 4 * SOURCE_HORIZON_SLOTS;
        let mut per_slot = vec![0u32; SOURCE_HORIZON_SLOTS as usize];
        let mut moved = 0;
        for i in 0..sources {
            let words = addr_words(&ipv4_mapped((0x0a00_0000 + i).to_be_bytes()));
            let slot = source_slot(&words, 0x1234_5678);
            per_slot[slot as usize] += 1;
            moved += u32::from(slot != source_slot(&words, 0x8765_4321));
        }
        // Four sources per slot on average; a fair hash leaves few slots
        // empty (e^-4, under 2 %) and none crowded.
        let empty = per_slot.iter().filter(|&&n| n == 0).count() as u32;
        assert!(empty < SOURCE_HORIZON_SLOTS / 40, "{empty} empty slots");
        assert!(per_slot.iter().all(|&n| n < 20), "a crowded slot");
        assert!(moved > sources * 9 / 10, "only {moved} sources moved");
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    /// Offers `n` candidates at `at`; returns how many went out and how
    /// often the clock was read.
    fn offer(budget: &mut EventBudget, limit: u32, n: u32, at: u64) -> (u32, u32) {
        let mut reads = 0;
        let admitted = (0..n)
            .filter(|_| {
                budget.admit(limit, || {
                    reads += 1;
                    at
                })
            })
            .count();
        (admitted as u32, reads)
    }

    #[test]
    fn a_flood_gets_the_limit_per_second_and_rarely_reads_the_clock() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 20, 10_000, 5 * SECOND), (20, 157));
        assert_eq!(offer(&mut budget, 20, 10_000, 5 * SECOND + SECOND / 2).0, 0);
        let (admitted, _) = offer(&mut budget, 20, 10_000, 6 * SECOND + 1);
        assert_eq!(admitted, 20, "a second later the budget is back");
    }

    #[test]
    fn under_the_limit_the_clock_is_read_once_per_window() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 20, 19, SECOND), (19, 1));
    }

    #[test]
    fn a_zero_limit_admits_nothing() {
        let mut budget = EventBudget::default();
        assert_eq!(offer(&mut budget, 0, 1000, 10 * SECOND).0, 0);
        assert_eq!(offer(&mut budget, 0, 1000, 20 * SECOND).0, 0);
    }
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
                4,
                [
                    20,
                    16,
                    8,
                    24,
                    16,
                    24,
                    8,
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
    fn rule_names_fit_or_are_refused() {
        let name = RuleName::new("ssh").expect("fits");
        assert_eq!(name.get(), Some("ssh"));
        assert_eq!(RuleName::default().get(), None);
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES)).is_some());
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES + 1)).is_none());
    }
}
