//! The knock machine against the reference model: any sequence of knock
//! candidates (TCP SYNs, UDP datagrams, echo requests) from a dozen
//! sources, waits, and sequence replacements (reloads, rotations, one-time
//! sequences used), through rules that open once or not, with or without
//! penalties, and a first steps' table from two buckets to many.
//!
//! The machine side is what `xknock_knock` runs (knock-ebpf's
//! `knocking.rs`), over host collections: every rule's `machine::on_packet`
//! on the progress found in the first steps' buckets (`first_step`) or the
//! progress map, records moved between them as the kernel moves them,
//! `record_failure` for penalties, the spent sequences, the grants owed.
//! The model side is the differential's `lab::model`, fed the same packets
//! as frames. After every packet their grants and progress must be equal:
//! above all, the machine never grants what the model does not.
//!
//! The one difference the model is told of: a first step's record that a
//! newer first step displaced from a full bucket (`Model::displace`). A
//! record displaced by the packet's own source (a rule of the same packet)
//! ends the comparison, since the model takes a packet whole.
#![no_main]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use arbitrary::Arbitrary;
use knock_common::{
    Addr, FIRST_STEP_WAYS, FirstStepKey, Knock, ONCE, ONCE_HELD, Penalty, Progress, RuleConfig,
    Settings, addr_words, displaced,
    machine::{self, Outcome},
    record_failure, record_progress, source_hash, way_of,
};
use lab::{frames::Frame, model::Model};
use libfuzzer_sys::fuzz_target;
use xknock::config::{Config, KernelConfig, PortSpec};

/// Knock steps rules draw from, as the configuration writes them.
const STEPS: [&str; 8] = [
    "tcp:1000", "udp:1000", "tcp:2000", "udp:3000", "tcp:4000", "udp:4000", "icmp:64", "icmp:512",
];
/// Where packets go: every step, a protected port, others.
const TARGETS: [&str; 12] = [
    "tcp:1000", "udp:1000", "tcp:2000", "udp:3000", "tcp:4000", "udp:4000", "icmp:64", "icmp:512",
    "tcp:22", "tcp:80", "udp:53", "icmp:56",
];
const SOURCES: [&str; 12] = [
    "198.18.0.2",
    "198.18.0.3",
    "198.18.0.4",
    "198.18.0.5",
    "198.18.0.6",
    "198.18.1.7",
    "fd18::2",
    "fd18::3",
    "fd18::4",
    "fd18::5",
    "fd18::6",
    "fd18:1::7",
];
/// The seed of the sources' hash: the sources above never share a
/// fingerprint under it (checked at every run), so a record is its
/// source's alone.
const SEED: u32 = 0x5eed_1234;
const TIMEOUTS: [&str; 3] = ["2500ms", "10500ms", "30500ms"];
const OPEN_FOR: [&str; 2] = ["1500ms", "30500ms"];
const PENALTIES: [&str; 3] = [
    "[penalty]\nfailures = 2\nwindow = \"20500ms\"\nduration = \"40500ms\"\n",
    "[penalty]\nfailures = 5\nwindow = \"60500ms\"\nduration = \"300500ms\"\n",
    "[penalty]\nfailures = 0\n",
];
/// Two buckets, eight, and many.
const FIRST_STEP_ENTRIES: [u32; 3] = [16, 64, 1 << 16];
/// Times are whole multiples of this (2^24 ns, about 17 ms): a first
/// step's record keeps time in units of 2^20 ns, so it reads true.
const TICK_NS: u64 = 1 << 24;
const MAX_ACTIONS: usize = 200;
const MAX_RULE_STEPS: usize = 6;

#[derive(Arbitrary, Debug)]
struct RuleSpec {
    steps: Vec<u8>,
    timeout: u8,
    open_for: u8,
    /// None, once, once and held for the fleet.
    once: u8,
}

#[derive(Arbitrary, Debug)]
enum Action {
    Packet {
        source: u8,
        target: u8,
    },
    /// A rule's whole current sequence from a source, each step sent twice
    /// if `twice`.
    Knock {
        source: u8,
        rule: u8,
        twice: bool,
    },
    Wait(u16),
    Replace {
        rule: u8,
        steps: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Case {
    rules: Vec<RuleSpec>,
    penalty: u8,
    first_steps: u8,
    actions: Vec<Action>,
}

fn pick<T: Copy>(list: &[T], index: u8) -> T {
    list[usize::from(index) % list.len()]
}

fn steps_of(indexes: &[u8]) -> Vec<&'static str> {
    indexes
        .iter()
        .take(MAX_RULE_STEPS)
        .map(|&i| pick(&STEPS, i))
        .collect()
}

fn config_text(case: &Case, sequences: &[Vec<&str>]) -> String {
    let mut text = format!(
        "{}[limits]\nfirst_step_entries = {}\n",
        pick(&PENALTIES, case.penalty),
        pick(&FIRST_STEP_ENTRIES, case.first_steps)
    );
    for (index, (spec, sequence)) in case.rules.iter().zip(sequences).enumerate() {
        let steps: Vec<String> = sequence.iter().map(|s| format!("\"{s}\"")).collect();
        text += &format!(
            "[[rule]]\nname = \"r{index}\"\nsequence = [{}]\nsequence_timeout = \"{}\"\nopen_for = \"{}\"\nprotect = [\"tcp:22\"]\n",
            steps.join(", "),
            pick(&TIMEOUTS, spec.timeout),
            pick(&OPEN_FOR, spec.open_for),
        );
    }
    text
}

/// The kernel's rules of a configuration, with the cases' `once` flags;
/// none if the configuration is refused.
fn kernel_rules(case: &Case, sequences: &[Vec<&str>]) -> Option<(Config, KernelConfig)> {
    let config = Config::parse(&config_text(case, sequences)).ok()?;
    let mut kernel = KernelConfig::try_from(&config).ok()?;
    for (index, spec) in case.rules.iter().enumerate() {
        // Fixed rules take one slot each, in file order, as the model
        // numbers them.
        assert_eq!(kernel.slots[index], [index as u32]);
        kernel.rules[index].once = [0, ONCE, ONCE | ONCE_HELD][usize::from(spec.once) % 3];
    }
    Some((config, kernel))
}

/// Where a source's progress through a rule is found (knocking.rs's
/// `Stored`).
#[derive(Clone, Copy)]
enum Stored {
    Nowhere,
    FirstStep(u64),
    Later(Progress),
}

/// A change to a bucket (knocking.rs's `FirstStepWrite`).
struct Write {
    old: u64,
    new: u64,
    displace: bool,
}

/// What `xknock_knock` keeps, over host collections.
struct Machine {
    settings: Settings,
    rules: Vec<RuleConfig>,
    buckets: Vec<[u64; FIRST_STEP_WAYS]>,
    progress: HashMap<(Addr, u32), Progress>,
    penalties: HashMap<Addr, Penalty>,
    spent: HashSet<(u32, u32)>,
    grants: HashMap<(Addr, u32), u64>,
}

impl Machine {
    fn new(kernel: &KernelConfig) -> Machine {
        let settings = Settings {
            source_seed: SEED,
            ..kernel.settings
        };
        Machine {
            rules: kernel.rules[..settings.rules as usize].to_vec(),
            buckets: vec![[0; FIRST_STEP_WAYS]; 1 << settings.first_step_bucket_bits],
            settings,
            progress: HashMap::new(),
            penalties: HashMap::new(),
            spent: HashSet::new(),
            grants: HashMap::new(),
        }
    }

    fn key(&self, src: &Addr, rule: u32) -> FirstStepKey {
        let hash = source_hash(&addr_words(src), self.settings.source_seed);
        FirstStepKey::of_rule(
            hash,
            self.settings.first_step_bucket_bits,
            rule,
            &self.rules[rule as usize],
        )
    }

    fn is_knock_port(&self, knock: Knock) -> bool {
        self.rules
            .iter()
            .any(|r| r.sequence[..r.steps as usize].contains(&knock))
    }

    /// One knock candidate from `src` at `now`, through every rule
    /// (`knock_rule`, then `grant_owed`); returns the records displaced.
    fn knock(&mut self, src: &Addr, knock: Knock, now: u64) -> Vec<u64> {
        let knock_port = self.is_knock_port(knock);
        let mut displaced = Vec::new();
        let mut owed = Vec::new();
        for index in 0..self.rules.len() as u32 {
            let rule = self.rules[index as usize];
            let first = self.key(src, index);
            let bucket = first.bucket as usize;
            let stored = match self.progress.get(&(*src, index)) {
                Some(p) => Stored::Later(*p),
                None => match first.find(|way| self.buckets[bucket][way]) {
                    Some(word) => Stored::FirstStep(word),
                    None => Stored::Nowhere,
                },
            };
            if matches!(stored, Stored::Nowhere) && rule.sequence[0] != knock {
                continue;
            }
            let had_penalty = self.penalties.contains_key(src);
            if self
                .penalties
                .get(src)
                .is_some_and(|p| now < p.ignored_until_ns)
            {
                break;
            }
            let progress = match stored {
                Stored::Nowhere => None,
                Stored::FirstStep(word) => Some(record_progress(word, now, rule.sequence_tag)),
                Stored::Later(p) => Some(p),
            };
            let transition = machine::on_packet(&rule, progress.as_ref(), knock, knock_port, now);
            let write = match transition.outcome {
                Outcome::Idle | Outcome::Granted => self.forget(src, index, stored),
                Outcome::Advanced(next) => self.keep(src, index, first, stored, &next),
                Outcome::Duplicate | Outcome::Untouched => None,
            };
            if let Some(write) = write {
                self.commit(bucket, write, now, &mut displaced);
            }
            if transition.reset.is_some() {
                self.count_failure(src, had_penalty, now);
            }
            if transition.outcome == Outcome::Granted {
                if rule.once != 0 && !self.spent.insert((index, rule.sequence_tag)) {
                    self.count_failure(src, had_penalty, now);
                    continue;
                }
                if rule.once & ONCE_HELD == 0 {
                    owed.push(index);
                }
            }
        }
        for index in owed {
            let expires = now + self.rules[index as usize].open_for_ns;
            self.grants.insert((*src, index), expires);
        }
        displaced
    }

    fn forget(&mut self, src: &Addr, rule: u32, stored: Stored) -> Option<Write> {
        match stored {
            Stored::Nowhere => None,
            Stored::FirstStep(word) => Some(Write {
                old: word,
                new: 0,
                displace: false,
            }),
            Stored::Later(_) => {
                self.progress.remove(&(*src, rule));
                None
            }
        }
    }

    fn keep(
        &mut self,
        src: &Addr,
        rule: u32,
        first: FirstStepKey,
        stored: Stored,
        next: &Progress,
    ) -> Option<Write> {
        let record = first.record(next.started_ns);
        match (stored, next.next_step <= 1) {
            (Stored::FirstStep(word), true) => Some(Write {
                old: word,
                new: record,
                displace: false,
            }),
            (Stored::Later(_), false) => {
                self.progress.insert((*src, rule), *next);
                None
            }
            (_, true) => {
                let _ = self.forget(src, rule, stored);
                Some(Write {
                    old: 0,
                    new: record,
                    displace: true,
                })
            }
            (_, false) => {
                let write = self.forget(src, rule, stored);
                self.progress.insert((*src, rule), *next);
                write
            }
        }
    }

    fn commit(&mut self, bucket: usize, write: Write, now: u64, displaced_out: &mut Vec<u64>) {
        if write.old == write.new {
            return;
        }
        let ways = self.buckets[bucket];
        let old = if write.displace {
            displaced(|way| ways[way], now)
        } else {
            write.old
        };
        if let Some(way) = way_of(|way| ways[way], old) {
            if write.displace && old != 0 {
                displaced_out.push(old);
            }
            self.buckets[bucket][way] = write.new;
        }
    }

    /// `count_failure`: the record found when the rule began, or a fresh
    /// one that replaces whatever is there.
    fn count_failure(&mut self, src: &Addr, had_penalty: bool, now: u64) {
        let mut fresh = Penalty {
            window_start_ns: now,
            ..Penalty::default()
        };
        let state = match self.penalties.get_mut(src) {
            Some(p) if had_penalty => p,
            _ => &mut fresh,
        };
        let _ = record_failure(&self.settings, state, now);
        if !had_penalty {
            self.penalties.insert(*src, fresh);
        }
    }

    fn live_grants(&self, now: u64) -> BTreeSet<(u128, usize)> {
        self.grants
            .iter()
            .filter(|(_, expires)| **expires > now)
            .map(|((src, rule), _)| (u128::from_be_bytes(*src), *rule as usize))
            .collect()
    }

    /// Sources mid-sequence through their rule's current sequence, and the
    /// steps they made.
    fn progress(&self, sources: &[Addr]) -> BTreeMap<(u128, usize), usize> {
        let mut out = BTreeMap::new();
        for src in sources {
            for (index, rule) in self.rules.iter().enumerate() {
                let key = (u128::from_be_bytes(*src), index);
                if let Some(p) = self.progress.get(&(*src, index as u32))
                    && p.sequence_tag == rule.sequence_tag
                {
                    out.insert(key, p.next_step as usize);
                    continue;
                }
                let first = self.key(src, index as u32);
                let ways = self.buckets[first.bucket as usize];
                if first.find(|way| ways[way]).is_some() {
                    out.insert(key, 1);
                }
            }
        }
        out
    }
}

fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn frame(src: IpAddr, target: &str) -> (Vec<u8>, Knock) {
    let spec: PortSpec = target.parse().expect("a target");
    let (proto, port) = (spec.0.proto, spec.0.port);
    let dst: IpAddr = if src.is_ipv4() {
        "198.18.0.1".parse().expect("an address")
    } else {
        "fd18::1".parse().expect("an address")
    };
    let frame = match proto {
        6 => Frame::tcp(src, dst, port, 0x02),
        17 => Frame::udp(src, dst, port),
        _ => Frame::echo(src, dst, usize::from(port)),
    };
    (frame.build().0, Knock::new(proto, port))
}

fn check_fingerprints(sources: &[Addr]) {
    let parts: HashSet<u32> = sources
        .iter()
        .map(|src| {
            let hash = source_hash(&addr_words(src), SEED);
            let key = FirstStepKey::new(hash, 1, 0, 1);
            // The source's part of the fingerprint: the top 16 bits of a record.
            (key.record(0) >> 48) as u32
        })
        .collect();
    assert_eq!(
        parts.len(),
        sources.len(),
        "the fixed sources share a fingerprint"
    );
}

fuzz_target!(|case: Case| {
    if case.rules.is_empty() || case.rules.len() > 4 {
        return;
    }
    let ips: Vec<IpAddr> = SOURCES
        .iter()
        .map(|s| s.parse().expect("a source"))
        .collect();
    let sources: Vec<Addr> = ips.iter().map(|ip| addr(*ip)).collect();
    check_fingerprints(&sources);
    let mut sequences: Vec<Vec<&str>> = case.rules.iter().map(|r| steps_of(&r.steps)).collect();
    let Some((config, kernel)) = kernel_rules(&case, &sequences) else {
        return;
    };
    let mut machine = Machine::new(&kernel);
    let mut model = Model::new(&config);
    for (index, spec) in case.rules.iter().enumerate() {
        let once = usize::from(spec.once) % 3;
        model.set_once(index, once != 0, once == 2);
    }
    // Sequences a rule had: a rule never gets one back (rotations and
    // one-time sequences never repeat, and a record of an old sequence
    // left in a bucket would count again).
    let mut used: HashSet<(usize, Vec<&str>)> = sequences.iter().cloned().enumerate().collect();
    let mut now: u64 = 1 << 40;
    let mut packets = Vec::new();
    for action in case.actions.iter().take(MAX_ACTIONS) {
        packets.clear();
        match action {
            Action::Packet { source, target } => {
                packets.push((usize::from(*source) % ips.len(), pick(&TARGETS, *target)));
            }
            Action::Knock {
                source,
                rule,
                twice,
            } => {
                let source = usize::from(*source) % ips.len();
                let rule = usize::from(*rule) % sequences.len();
                for step in &sequences[rule] {
                    packets.push((source, step));
                    if *twice {
                        packets.push((source, step));
                    }
                }
            }
            Action::Wait(ticks) => {
                let ns = u64::from(*ticks) * TICK_NS;
                now += ns;
                model.advance(ns);
            }
            Action::Replace { rule, steps } => {
                let rule = usize::from(*rule) % sequences.len();
                let steps = steps_of(steps);
                if used.contains(&(rule, steps.clone())) {
                    continue;
                }
                let mut next = sequences.clone();
                next[rule] = steps.clone();
                // A sequence the configuration refuses (empty, another
                // rule's) changes nothing.
                let Some((_, kernel)) = kernel_rules(&case, &next) else {
                    continue;
                };
                machine.rules[rule] = kernel.rules[rule];
                let specs: Vec<PortSpec> =
                    steps.iter().map(|s| s.parse().expect("a step")).collect();
                model.replace_sequence(rule, &specs);
                used.insert((rule, steps));
                sequences = next;
            }
        }
        for &(source, target) in &packets {
            let (bytes, knock) = frame(ips[source], target);
            let _ = model.packet(&bytes);
            let displaced = machine.knock(&sources[source], knock, now);
            for word in displaced {
                for (other, src) in sources.iter().enumerate() {
                    for rule in 0..machine.rules.len() {
                        if machine.key(src, rule as u32).holds(word) {
                            if other == source {
                                return;
                            }
                            model.displace(u128::from_be_bytes(*src), rule);
                        }
                    }
                }
            }
            let machine_grants = machine.live_grants(now);
            let model_grants: BTreeSet<(u128, usize)> = model.live_grants().into_iter().collect();
            let extra: Vec<_> = machine_grants.difference(&model_grants).collect();
            assert!(
                extra.is_empty(),
                "the machine granted what the model did not: {extra:x?}"
            );
            assert_eq!(
                machine_grants, model_grants,
                "the model granted what the machine did not"
            );
            assert_eq!(
                machine.progress(&sources),
                model.progress(),
                "progress differs after {target} from {}",
                ips[source]
            );
        }
    }
});
