//! Differential tests: generated configurations and packet sequences run
//! through the reference model (lab::model, and lab::answers for how a
//! stopped packet is steered to the host's closed port) and through the
//! real XDP program via BPF_PROG_TEST_RUN; verdicts, steered frames (byte
//! by byte), progress and live grants must agree.
//!
//! Time is simulated on both sides: the model's clock advances, and every
//! timestamp stored in the kernel maps is moved back by the same amount.
//! Timeouts end on half seconds and waits are whole seconds, so the few
//! milliseconds a case really takes never decide an outcome.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use knock_common::{Addr, ONCE, ONCE_HELD, PortRoles, XDP_DROP, XDP_PASS, horizon_units};
use lab::{
    answers::Concealment,
    frames::{
        AUTH, DEST_OPTS, Fragment, Frame, HOP_BY_HOP, ROUTING, TCP, TCP_ACK, TCP_FIN, TCP_PSH,
        TCP_RST, TCP_SYN, UDP,
    },
    model::{Model, Source, Verdict},
    require_root,
};
use proptest::{prelude::*, test_runner::TestRunner};
use xknock::{
    config::{Conceal, Config, KernelConfig, PortSpec, RuleKind},
    loader::{Filter, key_addr, monotonic_ns},
};

const SECOND: u64 = 1_000_000_000;
/// In `PORTS`: an echo request of the family of the source.
const ECHO: u8 = 1;

const SERVER_V4: &str = "198.18.0.1";
const SERVER_V6: &str = "fd18::1";
/// Pairs that share a /24 or a /64, and one in the /16 only, for rules
/// whose grants admit a prefix.
const SOURCES: [&str; 5] = [
    "198.18.0.2",
    "198.18.0.3",
    "fd18::2",
    "fd18::3",
    "198.18.1.7",
];
/// `grant_scope`s of generated rules: the address alone (the default, as
/// written and not), a /24 and /64, the widest.
const SCOPES: [&str; 4] = [
    "",
    "grant_scope = { ipv4 = 32, ipv6 = 128 }\n",
    "grant_scope = { ipv4 = 24, ipv6 = 64 }\n",
    "grant_scope = { ipv4 = 16, ipv6 = 32 }\n",
];
const STEPS: [&str; 8] = [
    "tcp:1000", "udp:1000", "tcp:2000", "udp:3000", "tcp:4000", "udp:4000", "icmp:64", "icmp:512",
];
/// Ports packets go to: every step, protected ones, and others; `ECHO`
/// stands for an echo request (ICMP or ICMPv6) of that payload size.
const PORTS: [(u8, u16); 15] = [
    (ECHO, 64),
    (ECHO, 512),
    (ECHO, 56),
    (TCP, 1000),
    (UDP, 1000),
    (TCP, 2000),
    (UDP, 3000),
    (TCP, 4000),
    (UDP, 4000),
    (TCP, 22),
    (UDP, 51820),
    (TCP, 2222),
    (TCP, 80),
    (UDP, 53),
    (UDP, SPA_PORT),
];
/// Where the `[[spa]]` entry of some configurations listens.
const SPA_PORT: u16 = 62201;
/// An SPA entry: its datagrams are stopped (and copied to a ring nobody
/// reads here), and it protects a port of its own and one a rule protects.
const SPA: &str = "spa_datagrams_per_second = 1000000\n[[spa]]\nname = \"spa\"\nlisten = \"udp:62201\"\nkey_base64 = \"wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=\"\nhmac_key_base64 = \"Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp\"\nopen_for = \"20s\"\nprotect = [\"tcp:2222\", \"tcp:80\"]\n";
/// Flags of generated segments, with the scanners' FIN, NULL and Xmas
/// probes (answered RST+ACK, acknowledging the FIN).
const FLAGS: [u8; 10] = [
    TCP_SYN,
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_PSH | TCP_ACK,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_FIN,
    0,
    TCP_FIN | TCP_PSH | 0x20,
];
const LISTS: [&str; 6] = [
    "",
    "allow = [\"198.18.0.3/32\"]\n",
    "deny = [\"198.18.0.3/32\"]\n",
    "deny = [\"fd18::/64\"]\n",
    "allow = [\"198.18.0.0/24\"]\ndeny = [\"198.18.0.2\"]\n",
    "allow = [\"fd18::2/128\"]\n",
];

#[derive(Clone, Debug)]
enum Action {
    /// A frame, cut short at a header boundary (even) or a byte (odd).
    Frame(Frame, Option<usize>),
    /// A rule's whole sequence from one source, possibly with each step sent
    /// twice, or in reverse order (a failed attempt).
    Knock {
        source: usize,
        rule: usize,
        retransmit: bool,
        reversed: bool,
    },
    Wait(u64),
    Garbage(Vec<u8>),
    /// The rule gets another sequence, as a reload, a used one-time
    /// sequence or a rotating rule's next window gives it.
    Replace {
        rule: usize,
        steps: Vec<&'static str>,
    },
}

fn rule_toml(name: &str, steps: &[&str], protect: &str, scope: &str) -> String {
    let steps: Vec<String> = steps.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[rule]]\nname = \"{name}\"\nsequence = [{}]\nsequence_timeout = \"10500ms\"\nopen_for = \"30500ms\"\nprotect = [{protect}]\n{scope}",
        steps.join(", ")
    )
}

/// Penalty settings: strict, the defaults' counts, or off.
const PENALTIES: [&str; 3] = [
    "[penalty]\nfailures = 2\nwindow = \"20500ms\"\nduration = \"40500ms\"\n",
    "[penalty]\nfailures = 5\nwindow = \"60500ms\"\nduration = \"300500ms\"\n",
    "[penalty]\nfailures = 0\n",
];

/// A configuration, and which of its rules open each sequence once (as
/// one-time and rotating rules do), and of those which only once the fleet
/// has recorded it (the kernel's `once` flags).
fn config() -> impl Strategy<Value = (String, [u32; 2])> {
    let once = || {
        prop_oneof![
            7 => Just(0),
            2 => Just(ONCE),
            1 => Just(ONCE | ONCE_HELD),
        ]
    };
    (config_text(), [once(), once()])
}

fn sequence() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(STEPS.to_vec(), 2..=4).prop_shuffle()
}

fn config_text() -> impl Strategy<Value = String> {
    (
        sequence(),
        proptest::option::of(sequence()),
        proptest::sample::select(LISTS.to_vec()),
        proptest::sample::select(PENALTIES.to_vec()),
        proptest::sample::select(vec!["", "", "", "conceal = \"drop\"\n"]),
        proptest::bool::weighted(0.4),
        proptest::sample::select(SCOPES.to_vec()),
        proptest::sample::select(SCOPES.to_vec()),
    )
        .prop_map(|(first, second, lists, penalty, conceal, spa, scope_a, scope_b)| {
            // Small maps load fast; a case never holds more than a few entries.
            let mut text = format!(
                "{conceal}{lists}{penalty}[limits]\nfirst_step_entries = 512\nprogress_entries = 512\ngrant_entries = 512\nflow_entries = 512\npenalty_entries = 512\n[flows]\ntcp_idle = \"60500ms\"\ntcp_closing = \"5500ms\"\nudp_idle = \"20500ms\"\n"
            );
            text += &rule_toml("a", &first, "\"tcp:22\", \"udp:51820\"", scope_a);
            if let Some(second) = second {
                text += &rule_toml("b", &second, "\"tcp:22\", \"tcp:2222\"", scope_b);
            }
            if spa {
                // Top-level keys must come before the first table.
                text = format!("{}{}", &SPA[..SPA.find('[').expect("a table")], text)
                    + &SPA[SPA.find('[').expect("a table")..];
            }
            text
        })
        .prop_filter("valid configuration", |text| Config::parse(text).is_ok())
}

fn frame() -> impl Strategy<Value = Frame> {
    let vlan = prop_oneof![
        8 => Just(vec![]),
        1 => proptest::collection::vec(proptest::sample::select(vec![0x8100u16, 0x88a8]), 1..=3),
    ];
    let ext = prop_oneof![
        6 => Just(vec![]),
        1 => proptest::collection::vec(
            proptest::sample::select(vec![HOP_BY_HOP, ROUTING, DEST_OPTS, AUTH]),
            1..=9
        ),
    ];
    let fragment = prop_oneof![
        8 => Just(Fragment::Whole),
        1 => Just(Fragment::First),
        1 => (1u16..100).prop_map(Fragment::Later),
    ];
    (
        0..SOURCES.len(),
        proptest::sample::select(PORTS.to_vec()),
        proptest::sample::select(FLAGS.to_vec()),
        proptest::sample::select(vec![40000u16, 40001]),
        vlan,
        proptest::sample::select(vec![0usize, 0, 4, 40]),
        ext,
        fragment,
        proptest::bool::weighted(0.8),
    )
        .prop_map(
            |(
                source,
                (proto, port),
                flags,
                src_port,
                vlan_tags,
                ipv4_options,
                ipv6_ext,
                fragment,
                checksums,
            )| {
                let src: IpAddr = SOURCES[source].parse().expect("literal");
                let dst: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }
                    .parse()
                    .expect("literal");
                let mut frame = match proto {
                    TCP => Frame::tcp(src, dst, port, flags),
                    ECHO => Frame::echo(src, dst, usize::from(port)),
                    // Big enough to be an SPA packet on the SPA port.
                    _ if port == SPA_PORT && src_port == 40001 => Frame {
                        payload: 200,
                        ..Frame::udp(src, dst, port)
                    },
                    _ => Frame::udp(src, dst, port),
                };
                frame.src_port = src_port;
                frame.vlan_tags = vlan_tags;
                frame.fragment = fragment;
                frame.checksums = checksums;
                if src.is_ipv4() {
                    frame.ipv4_options = ipv4_options;
                } else {
                    frame.ipv6_ext = ipv6_ext;
                }
                frame
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (frame(), proptest::option::weighted(0.15, any::<usize>())).prop_map(|(f, cut)| Action::Frame(f, cut)),
        4 => (0..SOURCES.len(), 0..2usize, any::<bool>(), proptest::bool::weighted(0.3))
            .prop_map(|(source, rule, retransmit, reversed)| Action::Knock { source, rule, retransmit, reversed }),
        2 => proptest::sample::select(vec![1u64, 2, 5, 11, 25, 31, 61]).prop_map(Action::Wait),
        1 => proptest::collection::vec(any::<u8>(), 0..90).prop_map(Action::Garbage),
        1 => (0..2usize, sequence()).prop_map(|(rule, steps)| Action::Replace { rule, steps }),
    ]
}

/// The frames an action sends.
fn frames_of(action: &Action, config: &Config) -> Vec<Vec<u8>> {
    match action {
        Action::Frame(frame, cut) => {
            let (mut bytes, boundaries) = frame.build();
            match cut {
                Some(n) if n % 2 == 0 => bytes.truncate(boundaries[n / 2 % boundaries.len()]),
                Some(n) => bytes.truncate(n / 2 % bytes.len().max(1)),
                None => {}
            }
            vec![bytes]
        }
        Action::Knock {
            source,
            rule,
            retransmit,
            reversed,
        } => {
            let Some(rule) = config.rules.get(*rule) else {
                return vec![];
            };
            let src: IpAddr = SOURCES[*source].parse().expect("literal");
            let dst: IpAddr = if src.is_ipv4() { SERVER_V4 } else { SERVER_V6 }
                .parse()
                .expect("literal");
            let copies = if *retransmit { 2 } else { 1 };
            let mut steps = rule.sequence().to_vec();
            if *reversed {
                steps.reverse();
            }
            steps
                .iter()
                .flat_map(|step| {
                    let frame = Frame {
                        checksums: true,
                        ..match step.0.proto {
                            TCP => Frame::tcp(src, dst, step.0.port, TCP_SYN),
                            ECHO => Frame::echo(src, dst, usize::from(step.0.port)),
                            _ => Frame::udp(src, dst, step.0.port),
                        }
                    };
                    std::iter::repeat_n(frame.build().0, copies)
                })
                .collect()
        }
        Action::Garbage(bytes) => vec![bytes.clone()],
        Action::Wait(_) | Action::Replace { .. } => vec![],
    }
}

/// Moves every timestamp the kernel stored back by `ns`, as if that much
/// time had passed.
fn age(filter: &mut Filter, ns: u64) {
    let sources: Vec<Addr> = source_addrs().collect();
    filter.maps_mut().age(ns, &sources).expect("age the maps");
}

fn source_addrs() -> impl Iterator<Item = Addr> {
    SOURCES
        .iter()
        .map(|s| key_addr(s.parse().expect("literal")))
}

/// The promise that lets the filter skip lookups: a source holding state
/// that can still matter has a horizon past now.
fn check_horizons(filter: &mut Filter, config: &Config) -> Result<(), TestCaseError> {
    let now = monotonic_ns();
    let longest_timeout = config.rules.iter().map(|r| r.sequence_timeout).max();
    let longest_timeout = longest_timeout.expect("a rule").as_nanos() as u64;
    let settings = filter.maps().settings().expect("settings");
    for addr in source_addrs() {
        let (_, horizon) = filter.maps().source_horizon(&addr).expect("horizon");
        let knocking = filter
            .maps()
            .progress_of(&[addr], now)
            .expect("progress")
            .into_iter()
            .any(|(k, p)| k.addr == addr && now - p.started_ns <= longest_timeout);
        // A record still counts while its window runs or its penalty lasts.
        let failing = filter
            .maps()
            .penalties()
            .expect("penalties")
            .into_iter()
            .any(|(a, p)| {
                a == addr
                    && (now.wrapping_sub(p.window_start_ns) <= settings.penalty_window_ns
                        || p.ignored_until_ns > now)
            });
        let now_units = horizon_units(now);
        prop_assert!(
            !knocking || horizon.knocking_until > now_units,
            "{addr:?} mid-sequence behind its horizon {horizon:?} at {now_units}"
        );
        prop_assert!(
            !failing || horizon.failing_until > now_units,
            "{addr:?} has a record of failures behind its horizon {horizon:?} at {now_units}"
        );
        // Every entry past a first step is counted in its source's slot.
        let later = filter
            .maps()
            .later_progress()
            .expect("progress")
            .into_iter()
            .filter(|(k, _)| k.addr == addr)
            .count() as u32;
        prop_assert!(
            horizon.later_steps >= later,
            "{addr:?} has {later} entries past a first step, its slot counts {horizon:?}"
        );
    }
    // A grant's horizon is its prefix's (the address's, without a scope).
    for (key, grant) in filter.maps().grants().expect("grants") {
        if grant.expires_ns <= now {
            continue;
        }
        let (_, horizon) = filter.maps().source_horizon(&key.addr).expect("horizon");
        let now_units = horizon_units(now);
        prop_assert!(
            horizon.admitted_until > now_units,
            "{key:?} granted behind its horizon {horizon:?} at {now_units}"
        );
    }
    Ok(())
}

/// Progress as the kernel holds it, in both tables (first steps and
/// later), through the sequence each rule has now (progress under an older
/// sequence counts for nothing, wherever it still lies).
///
/// The first steps' table keeps eight records a bucket, and a source's
/// first steps share its bucket: a case has at most ten at once (five
/// sources, two rules), so a record is displaced only if all five sources
/// fall in one of the table's 64 buckets (one case in 17 million). The
/// model need not know which record a new first step displaces
/// (`first_steps.rs` tests displacement).
fn kernel_progress(filter: &mut Filter) -> BTreeMap<(Source, usize), usize> {
    let rules = filter.maps().rules().expect("rules");
    let sources: Vec<Addr> = source_addrs().collect();
    let mut all = BTreeMap::new();
    let progress = filter.maps().progress_of(&sources, monotonic_ns());
    for (key, value) in progress.expect("progress") {
        if rules.get(key.rule as usize).map(|r| r.sequence_tag) != Some(value.sequence_tag) {
            continue;
        }
        let previous = all.insert(
            (u128::from_be_bytes(key.addr), key.rule as usize),
            value.next_step as usize,
        );
        assert!(previous.is_none(), "{key:?} is in both progress maps");
    }
    all
}

fn kernel_live_grants(filter: &mut Filter) -> Vec<(Source, usize)> {
    let now = monotonic_ns();
    let mut live: Vec<_> = filter
        .maps()
        .grants()
        .expect("grants")
        .into_iter()
        .filter(|(_, g)| g.expires_ns > now)
        .map(|(k, _)| (u128::from_be_bytes(k.addr), k.rule_index() as usize))
        .collect();
    live.sort_unstable();
    live
}

/// What the program did with a frame, or what the models say it must.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Drop,
    /// XDP_PASS of this frame, changed: steered to the host's closed port.
    Steered(Vec<u8>),
}

static CASES: AtomicU64 = AtomicU64::new(0);
static ANSWERS: AtomicU64 = AtomicU64::new(0);
static FRAMES: AtomicU64 = AtomicU64::new(0);
static GRANTS_SEEN: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);
static PENALIZED: AtomicU64 = AtomicU64::new(0);
static REPLACED: AtomicU64 = AtomicU64::new(0);
static SPENT: AtomicU64 = AtomicU64::new(0);

/// The kernel's configuration of `config`, with the `once` flags of its
/// rules.
fn kernel_config(config: &Config, once: [u32; 2]) -> KernelConfig {
    let mut kernel = KernelConfig::try_from(config).expect("fits");
    for (rule, once) in kernel.rules.iter_mut().zip(once) {
        rule.once = once;
    }
    kernel
}

/// Gives rule `rule` the sequence `steps` in `config`, the model and the
/// running program (its rules and port roles, as a new generation holds
/// them); false, changing nothing, for a sequence the configuration would
/// refuse (another rule's).
fn replace_sequence(
    config: &mut Config,
    once: [u32; 2],
    filter: &mut Filter,
    model: &mut Model,
    rule: usize,
    steps: &[&str],
) -> bool {
    let sequence: Vec<PortSpec> = steps.iter().map(|s| s.parse().expect("step")).collect();
    if rule >= config.rules.len()
        || config.rules[rule].spa().is_some()
        || config
            .rules
            .iter()
            .enumerate()
            .any(|(i, r)| i != rule && r.sequence() == sequence)
    {
        return false;
    }
    let before = kernel_config(config, once);
    // The cases write fixed sequences (and SPA entries, left out above).
    let RuleKind::Fixed { sequence: written } = &mut config.rules[rule].kind else {
        unreachable!("a [[rule]] of the differential has a fixed sequence");
    };
    *written = sequence.clone();
    let after = kernel_config(config, once);
    let mut roles = after.port_roles.clone();
    for (index, _) in &before.port_roles {
        if !roles.iter().any(|(i, _)| i == index) {
            roles.push((*index, PortRoles::default()));
        }
    }
    filter
        .maps_mut()
        .write_rules(&after.rules, &roles)
        .expect("write rules");
    model.replace_sequence(rule, &sequence);
    true
}

fn run_case(config_text: &str, once: [u32; 2], actions: &[Action]) -> Result<(), TestCaseError> {
    let mut config = Config::parse(config_text).expect("filtered to valid");
    let kernel_config = kernel_config(&config, once);
    let mut filter = Filter::load(&kernel_config).expect("load the XDP program");
    let mut model = Model::new(&config);
    for (rule, once) in once.into_iter().enumerate().take(config.rules.len()) {
        model.set_once(rule, once & ONCE != 0, once & ONCE_HELD != 0);
    }
    let seed = filter.maps().settings().expect("settings").source_seed;
    let concealment = Concealment::new(config.conceal == Conceal::Closed, seed);
    for (index, action) in actions.iter().enumerate() {
        if let Action::Wait(secs) = action {
            model.advance(secs * SECOND);
            age(&mut filter, secs * SECOND);
        }
        if let Action::Replace { rule, steps } = action
            && replace_sequence(&mut config, once, &mut filter, &mut model, *rule, steps)
        {
            REPLACED.fetch_add(1, Ordering::Relaxed);
        }
        for bytes in frames_of(action, &config) {
            // The kernel refuses test runs shorter than an Ethernet header.
            if bytes.len() < 14 {
                continue;
            }
            let (action_code, output) = filter.test_run_output(&bytes).expect("test run");
            let kernel = match action_code {
                XDP_PASS if output == bytes => Outcome::Pass,
                XDP_PASS => Outcome::Steered(output),
                XDP_DROP => Outcome::Drop,
                other => panic!("unexpected XDP action {other}"),
            };
            let expected = match model.packet(&bytes) {
                Verdict::Pass => Outcome::Pass,
                Verdict::Drop => Outcome::Drop,
                Verdict::Stopped => concealment
                    .steered(&bytes)
                    .map_or(Outcome::Drop, Outcome::Steered),
            };
            prop_assert_eq!(
                &kernel,
                &expected,
                "action {} {:?}\nframe {:02x?}",
                index,
                action,
                bytes
            );
            FRAMES.fetch_add(1, Ordering::Relaxed);
            match kernel {
                Outcome::Pass => PASSES.fetch_add(1, Ordering::Relaxed),
                Outcome::Steered(_) => ANSWERS.fetch_add(1, Ordering::Relaxed),
                Outcome::Drop => 0,
            };
        }
        prop_assert_eq!(
            kernel_progress(&mut filter),
            model.progress(),
            "progress after action {} {:?}",
            index,
            action
        );
        let live = model.live_grants();
        prop_assert_eq!(
            kernel_live_grants(&mut filter),
            live.clone(),
            "grants after action {} {:?}",
            index,
            action
        );
        GRANTS_SEEN.fetch_add(live.len() as u64, Ordering::Relaxed);
        let mut spent: Vec<(usize, u32)> = filter
            .maps()
            .spent()
            .expect("spent")
            .into_iter()
            .map(|(key, _)| (key.rule as usize, key.sequence_tag))
            .collect();
        spent.sort_unstable();
        let expected_spent = model.spent();
        prop_assert_eq!(
            &spent,
            &expected_spent,
            "spent sequences after action {} {:?}",
            index,
            action
        );
        SPENT.fetch_add(expected_spent.len() as u64, Ordering::Relaxed);
        check_horizons(&mut filter, &config)?;
    }
    let counters = filter.maps().counters().expect("counters");
    PENALIZED.fetch_add(counters["drop_penalized"], Ordering::Relaxed);
    CASES.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[test]
fn model_and_xdp_program_agree_on_generated_sequences() {
    require_root();
    let cases = std::env::var("XKNOCK_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (config(), proptest::collection::vec(action(), 1..40));
    let result = runner.run(&strategy, |((config, once), actions)| {
        run_case(&config, once, &actions)
    });
    let (replaced, spent) = (
        REPLACED.load(Ordering::Relaxed),
        SPENT.load(Ordering::Relaxed),
    );
    let (cases, frames, grants, passes, penalized, answers) = (
        CASES.load(Ordering::Relaxed),
        FRAMES.load(Ordering::Relaxed),
        GRANTS_SEEN.load(Ordering::Relaxed),
        PASSES.load(Ordering::Relaxed),
        PENALIZED.load(Ordering::Relaxed),
        ANSWERS.load(Ordering::Relaxed),
    );
    eprintln!(
        "differential: {cases} sequences, {frames} frames compared ({passes} passed, \
         {answers} steered to the host's closed port, {penalized} ignored under penalty), \
         {grants} live-grant observations, {replaced} sequences replaced, \
         {spent} spent-sequence observations"
    );
    if let Err(error) = result {
        panic!("{error}");
    }
    // The generator must reach the interesting states, or agreement says little.
    assert!(
        grants > 0
            && penalized > 0
            && passes > 0
            && passes < frames
            && answers > 0
            && replaced > 0
            && spent > 0,
        "generator too narrow: {grants} grants, {penalized} penalized, {passes}/{frames} passed, \
         {answers} steered, {replaced} replaced, {spent} spent"
    );
}

/// The failing horizon's two edges, which generated sequences reach only
/// by chance: a penalty outlasts the window of failures that started it
/// (its knocks stay ignored), and once both have run out a failure counts
/// from nothing (a first step then skips the penalty lookup).
#[test]
fn penalties_outlast_their_window_and_spent_records_count_from_nothing() {
    require_root();
    let config = format!(
        "{}{}",
        PENALTIES[0],
        rule_toml("a", &["tcp:1000", "udp:3000", "tcp:4000"], "\"tcp:22\"", "")
    );
    let src: IpAddr = SOURCES[0].parse().expect("literal");
    let dst: IpAddr = SERVER_V4.parse().expect("literal");
    let syn = |port| {
        let frame = Frame {
            checksums: true,
            ..Frame::tcp(src, dst, port, TCP_SYN)
        };
        Action::Frame(frame, None)
    };
    let knock = Action::Knock {
        source: 0,
        rule: 0,
        retransmit: false,
        reversed: false,
    };
    let actions = [
        // A first step, then another port: one failure; two within the
        // window (20.5 s) start a penalty (40.5 s).
        syn(1000),
        syn(80),
        syn(1000),
        syn(80),
        // Past the window, within the penalty: the knock is ignored.
        Action::Wait(25),
        knock.clone(),
        syn(22),
        // Past both: one failure is one, and the knock opens.
        Action::Wait(31),
        syn(1000),
        syn(80),
        knock,
        syn(22),
    ];
    run_case(&config, [0, 0], &actions).expect("the model and the program agree");
}
