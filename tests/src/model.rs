//! An independent reference model of the filter's contract (README, "What
//! the filter does"), written from the text rather than from the XDP
//! program: a byte-level parser over slices and the knock, grant and flow
//! rules over plain collections. Differential tests run the same frames
//! through this model and through the real program and compare.

use std::collections::{BTreeMap, HashMap, HashSet};

use xknock::config::Config;

/// The contract's framing bounds.
const VLAN_TAGS_WALKED: usize = 2;
const IPV6_EXT_HEADERS_WALKED: usize = 8;
/// Headers starting beyond this offset count as truncated.
const LAST_HEADER_OFFSET: usize = 4096;
/// A step's protocol for an echo request of either family (ICMP or ICMPv6),
/// whose "port" is its payload size.
const ECHO: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Malformed or unparsable framing: dropped without a word.
    Drop,
    /// Stopped at a knock port or a protected port: concealment decides
    /// what goes back (see `answers`).
    Stopped,
}

/// A (protocol, port) pair.
type Port = (u8, u16);
/// A source address in the one key form: IPv4 mapped into IPv6.
pub type Source = u128;

struct Rule {
    sequence: Vec<Port>,
    /// Each sequence opens once (one-time and rotating rules).
    once: bool,
    /// ... and only once the fleet has recorded it spent: completing it
    /// spends it here and grants nothing (the loader grants later).
    held: bool,
    timeout_ns: u64,
    open_for_ns: u64,
    protect: Vec<Port>,
    /// The host bits its grants leave out of an IPv4, and an IPv6 source
    /// (`grant_scope`): a grant admits the source's prefix.
    host_bits: (u32, u32),
}

/// Failures of one source: the window they count in, and any penalty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Failures {
    since: u64,
    count: u32,
    ignored_until: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowState {
    last_seen: u64,
    closing: bool,
}

pub struct Model {
    rules: Vec<Rule>,
    /// UDP ports `[[spa]]` entries take SPA packets on.
    spa_ports: Vec<Port>,
    allow: Vec<(Source, u32)>,
    deny: Vec<(Source, u32)>,
    tcp_idle: u64,
    tcp_closing: u64,
    udp_idle: u64,
    penalty_after: u32,
    penalty_window: u64,
    penalty_for: u64,
    now: u64,
    /// (source, rule) -> (steps accepted, when the first arrived, the
    /// sequence it was made through: once the rule's sequence is replaced,
    /// such progress counts for nothing)
    progress: BTreeMap<(Source, usize), (usize, u64, Vec<Port>)>,
    /// Sequences of rules that open once, which opened.
    spent: HashSet<(usize, Vec<Port>)>,
    /// (prefix, rule) -> expiry: the prefix of the knocking source its
    /// rule's scope admits (the source alone without one).
    grants: BTreeMap<(Source, usize), u64>,
    flows: HashMap<(Source, u16, u16, u8), FlowState>,
    failures: HashMap<Source, Failures>,
}

/// What a frame is, as far as the contract cares.
enum View {
    Pass,
    Drop,
    Transport {
        src: Source,
        proto: u8,
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The next `n` bytes, or None when the frame ends first or the header
    /// starts too deep.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.at > LAST_HEADER_OFFSET {
            return None;
        }
        let slice = self.bytes.get(self.at..self.at + n)?;
        self.at += n;
        Some(slice)
    }

    fn skip(&mut self, n: usize) {
        self.at += n;
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn mapped_v4(octets: &[u8]) -> Source {
    (0xffffu128 << 32)
        | u128::from(u32::from_be_bytes([
            octets[0], octets[1], octets[2], octets[3],
        ]))
}

fn view(frame: &[u8]) -> View {
    let mut cur = Cursor {
        bytes: frame,
        at: 0,
    };
    let Some(eth) = cur.take(14) else {
        return View::Drop;
    };
    let mut ethertype = be16(&eth[12..14]);
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        if tags == VLAN_TAGS_WALKED {
            return View::Drop;
        }
        let Some(tag) = cur.take(4) else {
            return View::Drop;
        };
        ethertype = be16(&tag[2..4]);
        tags += 1;
    }
    // Where the IP packet ends by its length field, whether it is whole
    // (no fragment of it, no AH), and the echo request of its family.
    let (src, proto, ip_end, whole, echo) = match ethertype {
        0x0800 => {
            let start = cur.at;
            let Some(ip) = cur.take(20) else {
                return View::Drop;
            };
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return View::Drop;
            }
            if be16(&ip[6..8]) & 0x1fff != 0 {
                return View::Pass; // a later fragment
            }
            cur.skip(ihl - 20);
            let whole = ip[6] & 0x20 == 0;
            let end = start + usize::from(be16(&ip[2..4]));
            (mapped_v4(&ip[12..16]), ip[9], end, whole, (1, 8))
        }
        0x86dd => {
            let start = cur.at;
            let Some(ip) = cur.take(40) else {
                return View::Drop;
            };
            if ip[0] >> 4 != 6 {
                return View::Drop;
            }
            let src = u128::from_be_bytes(ip[8..24].try_into().expect("16 bytes"));
            let end = start + 40 + usize::from(be16(&ip[4..6]));
            let mut whole = true;
            let mut next = ip[6];
            let mut walked = 0;
            loop {
                let is_ext = matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140);
                if !is_ext {
                    break;
                }
                if walked == IPV6_EXT_HEADERS_WALKED {
                    return View::Drop;
                }
                walked += 1;
                let start = cur.at;
                if next == 44 {
                    let Some(frag) = cur.take(8) else {
                        return View::Drop;
                    };
                    if be16(&frag[2..4]) >> 3 != 0 {
                        return View::Pass; // a later fragment
                    }
                    whole = false;
                    next = frag[0];
                } else {
                    let Some(head) = cur.take(2) else {
                        return View::Drop;
                    };
                    let len = if next == 51 {
                        whole = false;
                        (usize::from(head[1]) + 2) * 4
                    } else {
                        (usize::from(head[1]) + 1) * 8
                    };
                    next = head[0];
                    cur.at = start + len;
                }
            }
            (src, next, end, whole, (58, 128))
        }
        _ => return View::Pass, // not IP
    };
    if proto == echo.0 {
        // An echo request knocks with its payload size; any other ICMP,
        // and one that is fragmented or whose lengths do not add up, passes.
        let at = cur.at;
        let Some(header) = cur.take(8) else {
            return View::Pass;
        };
        if header[0] != echo.1 || header[1] != 0 || !whole || ip_end < at + 8 {
            return View::Pass;
        }
        let Ok(size) = u16::try_from(ip_end - at - 8) else {
            return View::Pass;
        };
        return View::Transport {
            src,
            proto: ECHO,
            src_port: 0,
            dst_port: size,
            flags: 0,
        };
    }
    let header = match proto {
        6 => cur.take(20),
        17 => cur.take(8),
        _ => return View::Pass,
    };
    let Some(header) = header else {
        return View::Drop;
    };
    let flags = if proto == 6 { header[13] } else { 0 };
    View::Transport {
        src,
        proto,
        src_port: be16(&header[0..2]),
        dst_port: be16(&header[2..4]),
        flags,
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

fn prefix(p: &xknock::config::Prefix) -> (Source, u32) {
    let (len, addr) = p.mapped();
    (u128::from_be_bytes(addr), len)
}

fn in_prefixes(list: &[(Source, u32)], src: Source) -> bool {
    list.iter().any(|&(net, len)| {
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        src & mask == net & mask
    })
}

impl Model {
    pub fn new(config: &Config) -> Model {
        let port = |spec: &xknock::config::PortSpec| (spec.0.proto, spec.0.port);
        Model {
            rules: config
                .rules
                .iter()
                .map(|r| Rule {
                    sequence: r.sequence().iter().map(port).collect(),
                    once: r.opens_once(),
                    held: false,
                    timeout_ns: nanos(r.sequence_timeout),
                    open_for_ns: nanos(r.open_for),
                    protect: r.protect.iter().map(port).collect(),
                    host_bits: r.grant_scope.host_bits(),
                })
                .collect(),
            spa_ports: config
                .rules
                .iter()
                .filter_map(|r| Some((17, r.spa()?.listen)))
                .collect(),
            allow: config.allow.iter().map(prefix).collect(),
            deny: config.deny.iter().map(prefix).collect(),
            tcp_idle: nanos(config.flows.tcp_idle.0),
            tcp_closing: nanos(config.flows.tcp_closing.0),
            udp_idle: nanos(config.flows.udp_idle.0),
            penalty_after: config.penalty.failures,
            penalty_window: nanos(config.penalty.window.0),
            penalty_for: nanos(config.penalty.duration.0),
            now: 0,
            progress: BTreeMap::new(),
            spent: HashSet::new(),
            grants: BTreeMap::new(),
            flows: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    pub fn advance(&mut self, ns: u64) {
        self.now += ns;
    }

    /// Makes rule `rule`'s sequences open once, or not; `held`: only once
    /// the fleet has recorded it (never, as far as the kernel goes).
    pub fn set_once(&mut self, rule: usize, once: bool, held: bool) {
        self.rules[rule].once = once;
        self.rules[rule].held = once && held;
    }

    /// Replaces rule `rule`'s sequence (a reload, a one-time sequence used,
    /// a rotating one's window over); grants stay.
    pub fn replace_sequence(&mut self, rule: usize, sequence: &[xknock::config::PortSpec]) {
        self.rules[rule].sequence = sequence.iter().map(|s| (s.0.proto, s.0.port)).collect();
    }

    /// Drops `src`'s progress through rule `rule` without a word: the
    /// kernel's first steps' table gave its record up to a newer first step
    /// (a bounded table's eviction; no failure is counted).
    pub fn displace(&mut self, src: Source, rule: usize) {
        self.progress.remove(&(src, rule));
    }

    /// Sources mid-sequence, through the sequence their rule has now:
    /// (source, rule) -> steps accepted.
    pub fn progress(&self) -> BTreeMap<(Source, usize), usize> {
        self.progress
            .iter()
            .filter(|((_, r), (_, _, sequence))| *sequence == self.rules[*r].sequence)
            .map(|(k, (steps, _, _))| (*k, *steps))
            .collect()
    }

    /// Sequences that opened once and may not again: (rule, sequence tag).
    pub fn spent(&self) -> Vec<(usize, u32)> {
        let mut spent: Vec<(usize, u32)> = self
            .spent
            .iter()
            .map(|(rule, sequence)| {
                let steps: Vec<knock_common::Knock> = sequence
                    .iter()
                    .map(|&(proto, port)| knock_common::Knock::new(proto, port))
                    .collect();
                (*rule, knock_common::sequence_tag(&steps))
            })
            .collect();
        spent.sort_unstable();
        spent
    }

    /// The prefix of `src` that rule `rule`'s grants admit, as the first
    /// address of the prefix.
    fn granted(&self, src: Source, rule: usize) -> Source {
        let (ipv4, ipv6) = self.rules[rule].host_bits;
        let host_bits = if src >> 32 == 0xffff { ipv4 } else { ipv6 };
        src & u128::MAX.checked_shl(host_bits).unwrap_or(0)
    }

    /// Grants still live now: (prefix, rule).
    pub fn live_grants(&self) -> Vec<(Source, usize)> {
        self.grants
            .iter()
            .filter(|(_, expires)| **expires > self.now)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn packet(&mut self, frame: &[u8]) -> Verdict {
        let (src, proto, src_port, dst_port, flags) = match view(frame) {
            View::Pass => return Verdict::Pass,
            View::Drop => return Verdict::Drop,
            View::Transport {
                src,
                proto,
                src_port,
                dst_port,
                flags,
            } => (src, proto, src_port, dst_port, flags),
        };
        let target = (proto, dst_port);
        if proto == ECHO {
            // Echo requests take part in knocking and pass whatever they did.
            self.knock(src, target);
            return Verdict::Pass;
        }
        // A datagram to an SPA port is the loader's to judge, never the
        // host's; it is no knock step and touches no knock progress.
        if self.spa_ports.contains(&target) {
            return Verdict::Stopped;
        }
        let opens = proto == 17 || flags & 0x12 == 0x02;
        if opens && self.knock(src, target) {
            return Verdict::Stopped;
        }
        if self.rules.iter().any(|r| r.sequence.contains(&target)) {
            return Verdict::Stopped;
        }
        let protecting: Vec<usize> = (0..self.rules.len())
            .filter(|&r| self.rules[r].protect.contains(&target))
            .collect();
        if protecting.is_empty() {
            return Verdict::Pass;
        }
        let flow_key = (src, src_port, dst_port, proto);
        if let Some(flow) = self.flows.get(&flow_key).copied() {
            let idle = match (proto, flow.closing) {
                (17, _) => self.udp_idle,
                (_, false) => self.tcp_idle,
                (_, true) => self.tcp_closing,
            };
            let fresh = self.now - flow.last_seen <= idle;
            if fresh && !(flow.closing && opens) {
                if flags & 0x04 != 0 {
                    self.flows.remove(&flow_key);
                } else {
                    let closing = flow.closing || flags & 0x01 != 0;
                    self.flows.insert(
                        flow_key,
                        FlowState {
                            last_seen: self.now,
                            closing,
                        },
                    );
                }
                return Verdict::Pass;
            }
            self.flows.remove(&flow_key);
        }
        if in_prefixes(&self.deny, src) {
            return Verdict::Stopped;
        }
        if in_prefixes(&self.allow, src) {
            return Verdict::Pass;
        }
        let granted = protecting.iter().any(|&r| {
            self.grants
                .get(&(self.granted(src, r), r))
                .is_some_and(|&expires| self.now < expires)
        });
        if granted {
            if opens {
                self.flows.insert(
                    flow_key,
                    FlowState {
                        last_seen: self.now,
                        closing: false,
                    },
                );
            }
            return Verdict::Pass;
        }
        Verdict::Stopped
    }

    /// Knock handling for a SYN or UDP datagram; true when it was a step.
    fn knock(&mut self, src: Source, target: Port) -> bool {
        let knock_port = self.rules.iter().any(|r| r.sequence.contains(&target));
        let mut was_step = false;
        for r in 0..self.rules.len() {
            let key = (src, r);
            // An SPA entry has no sequence.
            let Some(&first) = self.rules[r].sequence.first() else {
                continue;
            };
            let stored = self.progress.get(&key);
            if stored.is_none() && target != first {
                continue;
            }
            // Denied sources and those serving a penalty do not knock at
            // all: their packets to knock ports drop, the rest goes on.
            let penalized = self
                .failures
                .get(&src)
                .is_some_and(|f| self.now < f.ignored_until);
            if penalized || in_prefixes(&self.deny, src) {
                return false;
            }
            // Progress through a sequence the rule no longer has is none.
            let state = stored
                .filter(|(_, _, sequence)| *sequence == self.rules[r].sequence)
                .map(|(accepted, started, _)| (*accepted, *started));
            if let Some((accepted, started)) = state {
                let rule = &self.rules[r];
                let in_time = self.now - started <= rule.timeout_ns;
                if !in_time && !knock_port {
                    continue; // a lapsed sequence: the next knock resets it
                }
                if in_time && rule.sequence.get(accepted) == Some(&target) {
                    self.accept(key, accepted, started);
                    was_step = true;
                    continue;
                }
                if in_time && accepted >= 1 && rule.sequence[accepted - 1] == target {
                    was_step = true; // a retransmitted copy
                    continue;
                }
                self.progress.remove(&key);
                self.failed(src);
            }
            if target == first {
                self.accept(key, 0, self.now);
                was_step = true;
            }
        }
        was_step
    }

    /// A reset is a failed attempt; too many within the window and the
    /// source's knocks are ignored for a while.
    fn failed(&mut self, src: Source) {
        let now = self.now;
        let entry = self.failures.entry(src).or_insert(Failures {
            since: now,
            count: 0,
            ignored_until: 0,
        });
        if now - entry.since > self.penalty_window {
            *entry = Failures {
                since: now,
                count: 0,
                ..*entry
            };
        }
        entry.count += 1;
        if self.penalty_after > 0 && entry.count >= self.penalty_after {
            *entry = Failures {
                since: now,
                count: 0,
                ignored_until: now + self.penalty_for,
            };
        }
    }

    fn accept(&mut self, key: (Source, usize), index: usize, started: u64) {
        let rule = &self.rules[key.1];
        if index + 1 == rule.sequence.len() {
            self.progress.remove(&key);
            if rule.once && !self.spent.insert((key.1, rule.sequence.clone())) {
                // Opened before: a replay, refused as a failed attempt.
                self.failed(key.0);
                return;
            }
            if rule.held {
                // Spent here; the loader grants once the fleet agrees.
                return;
            }
            let expires = self.now + self.rules[key.1].open_for_ns;
            self.grants
                .insert((self.granted(key.0, key.1), key.1), expires);
        } else {
            let sequence = rule.sequence.clone();
            self.progress.insert(key, (index + 1, started, sequence));
        }
    }
}
