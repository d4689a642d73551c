//! One-time and rotating sequences in the fleet: a line knocked on one
//! host is used up on all (each host marks its own file), also raced on
//! two hosts, also for a host cut off meanwhile, and a rotating window's
//! sequence opens once for the fleet. SPA packets are in fleet_spends.rs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant, SystemTime},
};

use lab::{
    Reach,
    fleet_lab::FleetLab,
    fleet_run::{Fleet, FleetHost, ONLINE, PORT},
    held_sequences, knock_host, knock_in, run, used_lines, xknock_bin,
};
use xknock::config::{Config, PortSpec};

/// Three one-time lines in knockd's form.
const SEQUENCES: &str = "7001,7002:udp,7003\n8001:udp,8002,8003:udp\n9001,9002:udp,9003\n";
const LINE_1: [&str; 3] = ["tcp:7001", "udp:7002", "tcp:7003"];
const LINE_2: [&str; 3] = ["udp:8001", "tcp:8002", "udp:8003"];

/// A one-time rule "ssh" reading `file`, protecting `PORT`.
fn one_time_rule(file: &Path) -> String {
    format!(
        "[[rule]]\nname = \"ssh\"\nsequences_file = \"{}\"\nsequence_timeout = \"10s\"\n\
         open_for = \"60s\"\nprotect = [\"tcp:{PORT}\"]\n",
        file.display()
    )
}

/// A fleet of two started with the one-time rule, each host reading its
/// own copy of `sequences` in `dir` (with `extra` in its `[fleet]`); the
/// copies' paths, a's first.
fn one_time_fleet(dir: &Path, sequences: &str, extra: &str) -> (Fleet, Vec<PathBuf>) {
    let files: Vec<PathBuf> = ["a.otp", "b.otp"]
        .iter()
        .map(|name| dir.join(name))
        .collect();
    for file in &files {
        fs::write(file, sequences).expect("write sequences");
    }
    let (rule_a, rule_b) = (one_time_rule(&files[0]), one_time_rule(&files[1]));
    (Fleet::start(&[(&rule_a, extra), (&rule_b, extra)]), files)
}

/// Waits until `host` has logged, after its first `from` lines, that it
/// put the next one-time line in place.
fn next_line_in_place(host: &FleetHost, from: usize) {
    assert!(
        host.run()
            .wait_log_after(
                from,
                "next one-time sequence in place",
                Duration::from_secs(10)
            )
            .is_some(),
        "node {} did not move to its next line\n{}",
        host.node,
        host.dump()
    );
}

#[test]
fn a_one_time_line_knocked_on_one_host_is_used_up_on_every_host() {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (fleet, files) = one_time_fleet(dir.path(), SEQUENCES, "");
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let client = fleet.lab.client_addr().to_owned();
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "before");
    }

    // Line 1 on a: a opens once the fleet has it spent; b learns the grant
    // and moves to line 2 as well.
    a.knock_steps(&fleet.lab, &LINE_1);
    a.expect(&[("event", "grant"), ("source", &client)]);
    b.expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    next_line_in_place(a, 0);
    next_line_in_place(b, 0);
    assert_eq!(used_lines(&files[0]), [true, false, false], "a's file");
    assert_eq!(used_lines(&files[1]), [true, false, false], "b's file");

    // Revoked everywhere, then line 1 replayed to b: nothing opens.
    let revoke = a.xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    b.expect(&[
        ("event", "fleet_revoke"),
        ("source", &client),
        ("node", "a"),
    ]);
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "after the revoke");
    }
    let logged = b.run().log_len();
    b.knock_steps(&fleet.lab, &LINE_1);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        b.count(&[("event", "grant")]),
        0,
        "line 1 replayed to b opened it\n{}",
        fleet.dump()
    );
    fleet.assert_reach(1, false, Reach::Refused, "line 1 replayed to b");
    fleet.assert_reach(0, false, Reach::Refused, "line 1 replayed to b, at a");
    let said: Vec<_> = b
        .run()
        .events()
        .into_iter()
        .filter(|e| e["event"] == "reset" || e["event"] == "progress")
        .collect();
    let said: Vec<String> = said.iter().map(ToString::to_string).collect();
    eprintln!("b on the replayed line 1: [{}]", said.join(", "));

    // Line 2 on b opens b, and a learns it; both files mark line 2.
    b.knock_steps(&fleet.lab, &LINE_2);
    b.expect(&[("event", "grant"), ("source", &client)]);
    fleet.assert_reach(1, false, Reach::Open, "line 2 on b");
    a.expect(&[("event", "fleet_grant"), ("source", &client), ("node", "b")]);
    fleet.assert_reach(0, false, Reach::Open, "b's grant at a");
    next_line_in_place(b, logged);
    let marked = lab::fleet_run::wait_until(Duration::from_secs(10), || {
        used_lines(&files[0]) == [true, true, false] && used_lines(&files[1]) == [true, true, false]
    });
    assert!(
        marked,
        "files: a {:?}, b {:?}\n{}",
        used_lines(&files[0]),
        used_lines(&files[1]),
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_one_time_line_knocked_on_two_hosts_at_once_opens_on_one_only() {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (fleet, files) = one_time_fleet(dir.path(), SEQUENCES, "");
    let (v4, v6) = (fleet.lab.client_addr(), fleet.lab.client_addr6());
    for i in 0..2 {
        for v6 in [false, true] {
            fleet.assert_reach(i, v6, Reach::Refused, "before");
        }
    }

    // Line 1 at once: to a from the client's IPv4 address, to b from its
    // IPv6 one. Each kernel holds it; one host's spend wins.
    thread::scope(|scope| {
        let to_a = scope.spawn(|| fleet.hosts[0].knock_via(&fleet.lab, false, &LINE_1));
        fleet.hosts[1].knock_via(&fleet.lab, true, &LINE_1);
        to_a.join().expect("knock a");
    });
    let decided = |i: usize, source: &str| {
        let host = &fleet.hosts[i];
        let came = lab::fleet_run::wait_until(Duration::from_secs(10), || {
            host.count(&[("event", "grant"), ("source", source)])
                + host.count(&[("event", "reset"), ("source", source)])
                > 0
        });
        assert!(came, "node {} decided nothing\n{}", host.node, fleet.dump());
        host.count(&[("event", "grant"), ("source", source)]) > 0
    };
    let (a_opened, b_opened) = (decided(0, v4), decided(1, v6));
    assert!(
        a_opened != b_opened,
        "line 1 opened on a: {a_opened}, on b: {b_opened}\n{}",
        fleet.dump()
    );
    let (winner, loser) = if a_opened { (0, 1) } else { (1, 0) };
    let (won, lost) = if a_opened { (v4, v6) } else { (v6, v4) };
    let refused =
        fleet.hosts[loser].expect(&[("event", "reset"), ("source", lost), ("reason", "spent")]);
    // Refused by the fleet's transaction (which names the winner), or,
    // when the winner's spend reached the loser before its own knock was
    // complete, by its kernel's spent record (a reset without a detail).
    match refused["detail"].as_str() {
        Some(detail) => assert!(
            detail.contains(&format!("opened on {} first", fleet.hosts[winner].node)),
            "the fleet's refusal names the winner: {refused}"
        ),
        None => assert_eq!(
            refused["steps"], 3,
            "the kernel's own refusal of a spent line: {refused}"
        ),
    }
    eprintln!(
        "node {} won; node {} said {refused}",
        fleet.hosts[winner].node, fleet.hosts[loser].node
    );
    // The winner's source is open everywhere, the loser's nowhere.
    fleet.hosts[loser].expect(&[("event", "fleet_grant"), ("source", won)]);
    let won_v6 = winner == 1;
    for i in 0..2 {
        fleet.assert_reach(i, won_v6, Reach::Open, "the winner's source");
        fleet.assert_reach(i, !won_v6, Reach::Refused, "the loser's source");
    }
    // Line 1 is used once: both hosts are on line 2, not beyond.
    for host in &fleet.hosts {
        next_line_in_place(host, 0);
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(used_lines(&files[0]), [true, false, false], "a's file");
    assert_eq!(used_lines(&files[1]), [true, false, false], "b's file");
    fleet.hosts[loser].knock_via(&fleet.lab, !won_v6, &LINE_2);
    fleet.hosts[loser].expect(&[("event", "grant"), ("source", lost)]);
    fleet.assert_reach(loser, !won_v6, Reach::Open, "line 2 on the loser");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_host_cut_off_while_a_line_is_spent_elsewhere_refuses_it_and_moves_on_when_back() {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut fleet, files) = one_time_fleet(dir.path(), SEQUENCES, "");
    let (v4, v6) = (
        fleet.lab.client_addr().to_owned(),
        fleet.lab.client_addr6().to_owned(),
    );
    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);

    // Line 1 on a, which records it spent.
    fleet.hosts[0].knock_via(&fleet.lab, false, &LINE_1);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &v4)]);
    // The same line on b, cut off: b cannot record it (`refuse`, the
    // default) and opens nothing.
    fleet.hosts[1].knock_via(&fleet.lab, true, &LINE_1);
    let refused = fleet.hosts[1].expect_within(&[("event", "reset"), ("source", &v6)], ONLINE);
    assert_eq!(refused["reason"], "fleet_unreachable", "{refused}");
    for i in 0..2 {
        fleet.assert_reach(i, true, Reach::Refused, "line 1 on b while cut off");
    }
    fleet.assert_reach(1, false, Reach::Refused, "b has not heard of a's grant");
    assert_eq!(
        used_lines(&files[1]),
        [false, false, false],
        "b's file while cut off"
    );

    // Back, b learns line 1 is spent and a's grant, and moves to line 2.
    fleet.lab.reconnect_host(1);
    fleet.hosts[1].expect_within(
        &[("event", "fleet_grant"), ("source", &v4), ("node", "a")],
        ONLINE,
    );
    next_line_in_place(&fleet.hosts[1], 0);
    assert_eq!(
        used_lines(&files[1]),
        [true, false, false],
        "b's file once back"
    );
    fleet.hosts[1].knock_via(&fleet.lab, true, &LINE_1);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        fleet.hosts[1].count(&[("event", "grant")]),
        0,
        "line 1, spent on a, opened b\n{}",
        fleet.dump()
    );
    fleet.assert_reach(1, true, Reach::Refused, "line 1 to b once back");
    fleet.hosts[1].knock_via(&fleet.lab, true, &LINE_2);
    fleet.hosts[1].expect(&[("event", "grant"), ("source", &v6)]);
    fleet.assert_reach(1, true, Reach::Open, "line 2 on b");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_one_time_line_opened_offline_with_offline_spend_local_is_spent_fleet_wide_when_back() {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = "offline_spend = \"local\"\n";
    let (mut fleet, files) = one_time_fleet(dir.path(), SEQUENCES, local);
    let v4 = fleet.lab.client_addr().to_owned();
    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);

    // b, cut off, decides on its own records: line 1 opens it.
    fleet.hosts[1].knock_via(&fleet.lab, false, &LINE_1);
    fleet.hosts[1].expect_within(&[("event", "grant"), ("source", &v4)], ONLINE);
    fleet.assert_reach(1, false, Reach::Open, "b, line 1 while cut off");
    next_line_in_place(&fleet.hosts[1], 0);
    assert_eq!(used_lines(&files[1]), [true, false, false], "b's file");
    fleet.assert_reach(0, false, Reach::Refused, "a while b is cut off");
    assert_eq!(
        used_lines(&files[0]),
        [false, false, false],
        "a's file while b is cut off"
    );

    // Back: b records the spend and publishes the grant; a plants it and
    // moves past line 1 too.
    fleet.lab.reconnect_host(1);
    fleet.hosts[0].expect_within(
        &[("event", "fleet_grant"), ("source", &v4), ("node", "b")],
        ONLINE,
    );
    next_line_in_place(&fleet.hosts[0], 0);
    assert_eq!(
        used_lines(&files[0]),
        [true, false, false],
        "a's file once b is back"
    );
    assert_eq!(fleet.keys("spent/").len(), 1, "{:?}", fleet.keys(""));
    // Line 1 replayed to a (after a revoke) opens nothing; line 2 does.
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &v4]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    fleet.hosts[1].expect(&[("event", "fleet_revoke"), ("source", &v4), ("node", "a")]);
    fleet.hosts[0].knock_via(&fleet.lab, false, &LINE_1);
    thread::sleep(Duration::from_secs(1));
    fleet.assert_reach(0, false, Reach::Refused, "line 1 replayed to a");
    assert_eq!(
        fleet.hosts[0].count(&[("event", "grant")]),
        0,
        "{}",
        fleet.dump()
    );
    fleet.hosts[0].knock_via(&fleet.lab, false, &LINE_2);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &v4)]);
    fleet.assert_reach(0, false, Reach::Open, "line 2 on a");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

/// How often the rotating rule under test changes.
const ROTATE_SECS: u64 = 6;

/// A rotating rule "ssh" with the secret in `secret_file`, protecting `PORT`.
fn rotating_rule(secret_file: &Path) -> String {
    format!(
        "[[rule]]\nname = \"ssh\"\nsecret_file = \"{}\"\nrotate = \"{ROTATE_SECS}s\"\nsteps = 4\n\
         sequence_timeout = \"5s\"\nopen_for = \"60s\"\nprotect = [\"tcp:{PORT}\"]\n",
        secret_file.display()
    )
}

/// Waits (up to 5 s) until `host`'s filter holds `sequence` for its rule
/// `ssh`, as `status` reports it.
fn until_held(lab: &FleetLab, host: &FleetHost, sequence: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = host.status(lab);
        if held_sequences(&status, "ssh")
            .iter()
            .any(|held| held == sequence)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sequence:?} not in place 5 s on: {status}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The steps a knock reported sending.
fn sent_steps(output: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("knocked on ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no knock reported: {stderr}"));
    let (_, steps) = line.split_once(": ").expect("target: steps");
    steps.split(' ').map(str::to_owned).collect()
}

#[test]
fn a_rotating_sequence_opened_on_one_host_is_spent_on_every_host() {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("client state");
    let key = dir.path().join("ssh.key");
    let secret = run(xknock_bin().to_str().expect("utf-8"), &["keygen"]);
    fs::write(&key, &secret.stdout).expect("write secret");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let rule = rotating_rule(&key);
    let rotating = Config::parse(&rule).expect("valid").rules[0]
        .rotating()
        .cloned()
        .expect("rotating");
    let fleet = Fleet::start(&[(&rule, ""), (&rule, "")]);
    let (v4, v6) = (fleet.lab.client_addr(), fleet.lab.client_addr6());
    for i in 0..2 {
        for v6 in [false, true] {
            fleet.assert_reach(i, v6, Reach::Refused, "before");
        }
    }
    // Early in a window (begun after the hosts started), so that the
    // replays below come while its sequence is still installed.
    let started = rotating.window(SystemTime::now());
    let window = loop {
        let now = SystemTime::now();
        let window = rotating.window(now);
        let into = now
            .duration_since(rotating.window_start(window))
            .expect("after its start");
        if window > started && (Duration::from_millis(300)..=Duration::from_secs(1)).contains(&into)
        {
            break window;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let expected: Vec<String> = rotating
        .sequence(window)
        .expect("derives")
        .iter()
        .map(PortSpec::to_string)
        .collect();
    // In place when the window began, unless the machine is so busy that
    // a rotation's load outlasted its lead (the soak and the secrets tests
    // look at that); what is tested here is what opens, and where.
    for host in &fleet.hosts {
        until_held(&fleet.lab, host, &expected);
    }
    let host_a = knock_host(fleet.lab.host_addr(0));
    let sent = sent_steps(&knock_in(
        &fleet.lab.client,
        Some(state.path()),
        &[
            &host_a,
            "--config",
            fleet.hosts[0].config(),
            "--rule",
            "ssh",
        ],
    ));
    assert_eq!(sent, expected, "the client sends this window's sequence");
    fleet.hosts[0].expect(&[("event", "grant"), ("source", v4)]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", v4), ("node", "a")]);
    fleet.assert_reach(1, false, Reach::Open, "b with a's grant");

    // A sniffer replays the sequence to b from another address: spent.
    let steps: Vec<&str> = sent.iter().map(String::as_str).collect();
    fleet.hosts[1].knock_via(&fleet.lab, true, &steps);
    let refused = fleet.hosts[1].expect(&[("event", "reset"), ("source", v6)]);
    assert_eq!(refused["reason"], "spent", "{refused}\n{}", fleet.dump());
    eprintln!("b on the replay: {refused}");
    assert!(
        rotating.window(SystemTime::now()) <= window + 1,
        "the replay came after the window's sequence was gone: the test is too slow"
    );
    thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        fleet.assert_reach(i, true, Reach::Refused, "the replayed rotating sequence");
        assert_eq!(
            fleet.hosts[i].count(&[("event", "grant"), ("source", v6)]),
            0,
            "{}",
            fleet.dump()
        );
    }
    eprintln!("took {} ms", start.elapsed().as_millis());
}

/// The kernel's tag of a sequence given as `xknock knock` steps.
fn tag_of(steps: &[&str]) -> u32 {
    let quoted: Vec<String> = steps.iter().map(|s| format!("\"{s}\"")).collect();
    let config = Config::parse(&format!(
        "[[rule]]\nname = \"t\"\nsequence = [{}]\nsequence_timeout = \"5s\"\nopen_for = \"5s\"\nprotect = [\"tcp:{PORT}\"]\n",
        quoted.join(", ")
    ))
    .expect("valid");
    let knocks: Vec<_> = config.rules[0].sequence().iter().map(|s| s.0).collect();
    knock_common::sequence_tag(&knocks)
}

#[test]
fn a_host_back_after_two_lines_were_spent_elsewhere_moves_past_both() {
    let start = Instant::now();
    // The fleet lists spends in key order, by tag: the first line here is
    // the one whose tag sorts after the second's, so b hears of the
    // second line's spend before the first's.
    let (mut first, mut second) = (LINE_1, LINE_2);
    let (mut first_text, mut second_text) = ("7001,7002:udp,7003", "8001:udp,8002,8003:udp");
    if tag_of(&first) < tag_of(&second) {
        (first, second) = (second, first);
        (first_text, second_text) = (second_text, first_text);
    }
    let text = format!("{first_text}\n{second_text}\n9001,9002:udp,9003\n");
    let third = ["tcp:9001", "udp:9002", "tcp:9003"];
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut fleet, files) = one_time_fleet(dir.path(), &text, "");
    let v6 = fleet.lab.client_addr6().to_owned();
    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);

    // a spends both lines while b is away.
    for (n, line) in [first, second].iter().enumerate() {
        let logged = fleet.hosts[0].run().log_len();
        fleet.hosts[0].knock_via(&fleet.lab, false, line);
        fleet.hosts[0].expect_nth(&[("event", "grant")], n + 1, Duration::from_secs(5));
        next_line_in_place(&fleet.hosts[0], logged);
    }
    assert_eq!(used_lines(&files[0]), [true, true, false], "a's file");
    assert_eq!(fleet.keys("spent/").len(), 2, "{:?}", fleet.keys(""));

    let logged = fleet.hosts[1].run().log_len();
    fleet.lab.reconnect_host(1);
    fleet.hosts[1].expect_nth(&[("event", "fleet_online")], 2, ONLINE);
    let moved = lab::fleet_run::wait_until(Duration::from_secs(10), || {
        used_lines(&files[1]) == [true, true, false]
    });
    assert!(
        moved,
        "b's file once back: {:?} (a spent lines 1 and 2)\n{}",
        used_lines(&files[1]),
        fleet.dump()
    );
    // A line is marked before the reload that puts the next in place: line
    // 3 is in place once b has reloaded twice.
    let in_place = lab::fleet_run::wait_until(ONLINE, || {
        let log = fleet.hosts[1].run().log();
        let reloads = log.get(logged..).unwrap_or_default().iter();
        reloads
            .filter(|l| l.contains("next one-time sequence in place"))
            .count()
            >= 2
    });
    assert!(in_place, "b did not put line 3 in place\n{}", fleet.dump());
    fleet.hosts[1].knock_via(&fleet.lab, true, &third);
    fleet.hosts[1].expect(&[("event", "grant"), ("source", &v6)]);
    fleet.assert_reach(1, true, Reach::Open, "line 3 on b");
    eprintln!("took {} ms", start.elapsed().as_millis());
}
