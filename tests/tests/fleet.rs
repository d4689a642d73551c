//! The fleet end to end: xknock hosts that share one etcd cluster share
//! their grants and revokes. A knock on one opens all; a revoke on one
//! closes all; `status` lists the hosts and tells a differing one; a lost
//! member, the whole cluster gone, a restarted host and a host cut off
//! while the history it needs is compacted away never open anything, and
//! each host learns what it missed once it can. A grant of a prefix
//! (`grant_scope`) is shared and revoked like any other.
//!
//! Spends are in fleet_spends.rs (SPA packets, `offline_spend`) and
//! fleet_sequences.rs (one-time and rotating sequences); revokes beyond
//! the plain case in fleet_revokes.rs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lab::{
    Reach,
    fleet_run::{Fleet, ONLINE, PORT, ssh_rule, wait_until},
};

#[test]
fn a_knock_on_one_host_opens_the_fleet_and_a_revoke_on_another_closes_it() {
    let start = Instant::now();
    let fleet = Fleet::two("60s");
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before any knock");

    let knocked = Instant::now();
    a.knock(&fleet.lab, &["--rule", "ssh"]);
    a.expect(&[("event", "grant"), ("source", &client), ("rule", "ssh")]);
    fleet.assert_reach(0, false, Reach::Open, "on the host knocked");
    let learned = b.expect(&[
        ("event", "fleet_grant"),
        ("source", &client),
        ("rule", "ssh"),
        ("node", "a"),
    ]);
    eprintln!(
        "b learned a's grant {} ms after the knock: {learned}",
        knocked.elapsed().as_millis()
    );
    let left = learned["expires_in_secs"]
        .as_f64()
        .expect("expires_in_secs");
    assert!(
        (50.0..=60.0).contains(&left),
        "b's copy expires in {left} s"
    );
    fleet.assert_reach(1, false, Reach::Open, "on the other host");
    assert_eq!(
        fleet.keys("grants/").len(),
        1,
        "one grant key for the knock: {:?}",
        fleet.keys("")
    );
    // Only b printed `fleet_grant`: a's own grant coming back on its watch
    // is not news.
    assert_eq!(a.count(&[("event", "fleet_grant")]), 0, "{}", fleet.dump());

    let revoke = b.xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on b: {revoke:?}");
    a.expect(&[
        ("event", "fleet_revoke"),
        ("source", &client),
        ("node", "b"),
    ]);
    fleet.assert_all(Reach::Refused, "after the revoke");
    // Sweeps come and go (every 500 ms): neither host puts the revoked
    // grant back.
    thread::sleep(Duration::from_secs(2));
    fleet.assert_all(Reach::Refused, "2 s after the revoke");
    assert!(
        fleet.keys("grants/").is_empty(),
        "grant keys after the revoke: {:?}",
        fleet.keys("grants/")
    );
    // The revoke undoes grants made before it, not a knock after it.
    a.knock(&fleet.lab, &["--rule", "ssh"]);
    b.expect_nth(
        &[("event", "fleet_grant"), ("source", &client), ("node", "a")],
        2,
        Duration::from_secs(5),
    );
    fleet.assert_reach(
        1,
        false,
        Reach::Open,
        "b after a knock on a after the revoke",
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn status_lists_the_fleets_hosts_and_tells_the_one_with_other_rules() {
    let start = Instant::now();
    let same = ssh_rule("60s");
    let other = ssh_rule("61s");
    let fleet = Fleet::start(&[(&same, ""), (&same, ""), (&other, "")]);
    let a = &fleet.hosts[0];
    let status = a.status(&fleet.lab);
    let own = status["fleet"]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no fleet.fingerprint: {status:#}"))
        .to_owned();
    let mut hosts: Vec<(String, bool, String)> = status["fleet"]["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no fleet.hosts: {status:#}"))
        .iter()
        .map(|h| {
            (
                h["node"].as_str().unwrap_or_default().to_owned(),
                h["differs"].as_bool().expect("differs"),
                h["fingerprint"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    hosts.sort();
    let summary: Vec<(&str, bool)> = hosts.iter().map(|h| (h.0.as_str(), h.1)).collect();
    assert_eq!(
        summary,
        [("a", false), ("b", false), ("c", true)],
        "{status:#}"
    );
    assert_eq!(hosts[0].2, own, "a's own record: {status:#}");
    assert_eq!(hosts[1].2, own, "b runs a's rules: {status:#}");
    assert_ne!(hosts[2].2, own, "c runs other rules: {status:#}");
    // From c's side, a and b are the ones that differ.
    let from_c = fleet.hosts[2].status(&fleet.lab);
    let differ: Vec<(String, bool)> = from_c["fleet"]["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            (
                h["node"].as_str().unwrap_or_default().to_owned(),
                h["differs"] == true,
            )
        })
        .collect();
    for (node, differs) in differ {
        assert_eq!(differs, node != "c", "node {node} from c: {from_c:#}");
    }
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn status_tells_a_host_whose_rules_a_reload_changed() {
    let start = Instant::now();
    let fleet = Fleet::two("60s");
    let differs = |fleet: &Fleet, from: usize| -> Vec<(String, bool)> {
        let status = fleet.hosts[from].status(&fleet.lab);
        let mut hosts: Vec<(String, bool)> = status["fleet"]["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("no fleet.hosts: {status:#}"))
            .iter()
            .map(|h| {
                (
                    h["node"].as_str().unwrap_or_default().to_owned(),
                    h["differs"] == true,
                )
            })
            .collect();
        hosts.sort();
        hosts
    };
    let expect = |pairs: [(&str, bool); 2]| -> Vec<(String, bool)> {
        pairs.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect()
    };
    assert_eq!(differs(&fleet, 0), expect([("a", false), ("b", false)]));
    // b reloads other rules (SIGHUP), as an operator changes a host.
    fleet.hosts[1].rewrite_rules(&ssh_rule("61s"));
    fleet.hosts[1].run().hup("reloaded");
    // It follows the fleet still.
    let client = fleet.lab.client_addr().to_owned();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    fleet.assert_reach(1, false, Reach::Open, "b after its reload, with a's grant");
    // Heartbeats every 500 ms carry b's fingerprint.
    let told = wait_until(Duration::from_secs(5), || {
        differs(&fleet, 0) == expect([("a", false), ("b", true)])
    });
    assert!(
        told,
        "a's status after b reloaded other rules: {:?}; b's own: {:?}\n{}",
        differs(&fleet, 0),
        differs(&fleet, 1),
        fleet.dump()
    );
    assert_eq!(
        differs(&fleet, 1),
        expect([("a", true), ("b", false)]),
        "b's status"
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_knock_still_opens_the_fleet_with_the_etcd_leader_killed() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    let leader = fleet.lab.leader().expect("a healthy cluster has a leader");
    fleet.lab.kill_member(leader);
    let killed = Instant::now();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &client)]);
    fleet.assert_reach(0, false, Reach::Open, "on the host knocked");
    // A new leader in one or two seconds; a host on the dead member moves
    // to another.
    fleet.hosts[1].expect_within(
        &[("event", "fleet_grant"), ("source", &client), ("node", "a")],
        ONLINE,
    );
    eprintln!(
        "b learned the grant {} ms after member {leader} (the leader) died",
        killed.elapsed().as_millis()
    );
    fleet.assert_reach(1, false, Reach::Open, "on the other host");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn without_etcd_hosts_keep_enforcing_open_on_their_own_knocks_and_share_them_when_it_is_back() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    let client6 = fleet.lab.client_addr6().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    // A grant made while etcd is there: both hosts have it.
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client)]);
    for host in &fleet.hosts {
        assert_eq!(
            host.count(&[("event", "fleet_offline")]),
            0,
            "{}",
            host.dump()
        );
    }

    fleet.lab.stop_all();
    let stopped = Instant::now();
    for host in &fleet.hosts {
        host.expect_within(&[("event", "fleet_offline")], ONLINE);
    }
    eprintln!(
        "both hosts offline {} ms after the cluster stopped",
        stopped.elapsed().as_millis()
    );
    // What they knew stays; what they did not stays shut.
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Open, "a grant made before etcd went");
        fleet.assert_reach(i, true, Reach::Refused, "a source never knocked");
    }
    // A's own knock (a fixed sequence) still opens A, and A alone.
    fleet.hosts[0].knock6(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &client6)]);
    fleet.assert_reach(0, true, Reach::Open, "a's own knock without etcd");
    thread::sleep(Duration::from_secs(1));
    fleet.assert_reach(1, true, Reach::Refused, "b without etcd");
    // A revoke cannot reach the fleet: it says so, and fails, having
    // revoked on its own host only.
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client]);
    let said = String::from_utf8_lossy(&revoke.stderr);
    assert!(
        !revoke.status.success() && said.contains("this host only"),
        "revoke on b without etcd: {revoke:?}"
    );
    fleet.assert_reach(1, false, Reach::Refused, "b after its own revoke");
    fleet.assert_reach(0, false, Reach::Open, "a, which heard of no revoke");

    fleet.lab.start_all();
    fleet.lab.wait_healthy();
    let back = Instant::now();
    fleet.hosts[1].expect_within(
        &[
            ("event", "fleet_grant"),
            ("source", &client6),
            ("node", "a"),
        ],
        ONLINE,
    );
    eprintln!(
        "b learned a's offline grant {} ms after the cluster was healthy",
        back.elapsed().as_millis()
    );
    fleet.assert_reach(1, true, Reach::Open, "b once etcd is back");
    for host in &fleet.hosts {
        host.expect_nth(&[("event", "fleet_online")], 2, ONLINE);
    }
    // The revoke tried again reaches a now.
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client]);
    assert!(
        revoke.status.success(),
        "revoke on b tried again: {revoke:?}"
    );
    fleet.hosts[0].expect(&[
        ("event", "fleet_revoke"),
        ("source", &client),
        ("node", "b"),
    ]);
    thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "the revoke tried again");
        fleet.assert_reach(i, true, Reach::Open, "the IPv6 source, not revoked");
    }
    // An IPv6 source is revoked the same way.
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &client6]);
    assert!(
        revoke.status.success(),
        "revoke of {client6} on a: {revoke:?}"
    );
    fleet.hosts[1].expect(&[
        ("event", "fleet_revoke"),
        ("source", &client6),
        ("node", "a"),
    ]);
    for i in 0..2 {
        fleet.assert_reach(i, true, Reach::Refused, "the IPv6 source revoked");
    }
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_restarted_host_learns_the_grants_made_while_it_was_down() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    fleet.hosts[1].stop();
    // `xknock grant` on a: its run publishes it at its next sweep.
    let granted = fleet.hosts[0].xknock(&fleet.lab, &["grant", &client, "--rule", "ssh"]);
    assert!(granted.status.success(), "grant on a: {granted:?}");
    fleet.assert_reach(0, false, Reach::Open, "a after `xknock grant`");
    assert!(
        wait_until(Duration::from_secs(5), || fleet.keys("grants/").len() == 1),
        "a did not publish its grant: {:?}\n{}",
        fleet.keys(""),
        fleet.dump()
    );
    // B's filter, left pinned by its stopped run, still refuses.
    fleet.assert_reach(1, false, Reach::Refused, "b stopped");
    // `xknock grant` on b meanwhile (IPv6): no run publishes it yet.
    let client6 = fleet.lab.client_addr6().to_owned();
    let granted = fleet.hosts[1].xknock(&fleet.lab, &["grant", &client6, "--rule", "ssh"]);
    assert!(granted.status.success(), "grant on b: {granted:?}");
    fleet.assert_reach(1, true, Reach::Open, "b after `xknock grant`, stopped");
    fleet.assert_reach(0, true, Reach::Refused, "a before b runs again");

    let restarted = Instant::now();
    fleet.hosts[1].restart(&fleet.lab);
    fleet.hosts[1].expect_within(
        &[("event", "fleet_grant"), ("source", &client), ("node", "a")],
        ONLINE,
    );
    eprintln!(
        "b learned the grant {} ms after it was started again",
        restarted.elapsed().as_millis()
    );
    fleet.assert_reach(1, false, Reach::Open, "b restarted");
    // And b's run, started, publishes what was granted on b meanwhile.
    fleet.hosts[0].expect(&[
        ("event", "fleet_grant"),
        ("source", &client6),
        ("node", "b"),
    ]);
    fleet.assert_reach(0, true, Reach::Open, "a with b's grant");

    // Down again, b misses a revoke; its filter keeps the grant meanwhile
    // (nothing removes a grant but its expiry or a revoke). Back, it
    // applies the revoke and does not publish the grant again.
    fleet.hosts[1].stop();
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    fleet.assert_reach(0, false, Reach::Refused, "a after its revoke");
    fleet.assert_reach(
        1,
        false,
        Reach::Open,
        "b stopped, before it hears of the revoke",
    );
    fleet.hosts[1].restart(&fleet.lab);
    fleet.hosts[1].expect_within(
        &[
            ("event", "fleet_revoke"),
            ("source", &client),
            ("node", "a"),
        ],
        ONLINE,
    );
    fleet.assert_reach(1, false, Reach::Refused, "b restarted after the revoke");
    thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "2 s after b's restart");
        fleet.assert_reach(i, true, Reach::Open, "the IPv6 source, not revoked");
    }
    let keys = fleet.keys(&format!("grants/{client}/"));
    assert!(
        keys.is_empty(),
        "the revoked grant was published again: {keys:?}\n{}",
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_host_cut_off_while_its_history_is_compacted_lists_again_and_learns_what_it_missed() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    let before = fleet.lab.revision();
    fleet.lab.isolate_host(1);
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &client)]);
    fleet.assert_reach(0, false, Reach::Open, "a after its knock");
    // Enough writes that b's next revision is history, then that history
    // compacted away.
    for i in 0..50 {
        fleet
            .lab
            .etcdctl_ok(&["put", &format!("{}-noise/{i}", fleet.prefix), "x"]);
    }
    let compacted = fleet.lab.compact_to_latest();
    assert!(compacted > before + 50, "{compacted} after {before}");
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);
    fleet.assert_reach(1, false, Reach::Refused, "b cut off from etcd");
    assert_eq!(
        fleet.hosts[1].count(&[("event", "fleet_grant")]),
        0,
        "{}",
        fleet.dump()
    );

    fleet.lab.reconnect_host(1);
    let reconnected = Instant::now();
    fleet.hosts[1].expect_nth(&[("event", "fleet_online")], 2, ONLINE);
    fleet.hosts[1].expect_within(
        &[("event", "fleet_grant"), ("source", &client), ("node", "a")],
        ONLINE,
    );
    eprintln!(
        "b back and holding a's grant {} ms after it was reconnected",
        reconnected.elapsed().as_millis()
    );
    let online = fleet.hosts[1]
        .run()
        .events()
        .into_iter()
        .filter(|e| e["event"] == "fleet_online")
        .nth(1)
        .expect("a second fleet_online");
    let revision = online["revision"].as_i64().expect("revision");
    assert!(
        revision >= compacted,
        "b listed at {revision}, before the compaction at {compacted}: {online}"
    );
    fleet.assert_reach(1, false, Reach::Open, "b reconnected");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn hosts_on_a_member_cut_off_from_its_quorum_move_to_another_and_share_a_knock() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    // The member b follows, as its `fleet_online` says.
    let online = fleet.hosts[1].expect(&[("event", "fleet_online")]);
    let endpoint = online["endpoint"].as_str().expect("endpoint").to_owned();
    let member = fleet
        .lab
        .endpoints()
        .iter()
        .position(|e| *e == endpoint)
        .unwrap_or_else(|| panic!("b follows {endpoint}, no member of the lab"));
    fleet.lab.partition_member(member);
    let cut = Instant::now();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[0].expect(&[("event", "grant"), ("source", &client)]);
    fleet.assert_reach(0, false, Reach::Open, "a after its knock");
    // The partitioned member still answers, with what it had: b must not
    // take that for the fleet, and must learn the grant from the others.
    fleet.hosts[1].expect_within(
        &[("event", "fleet_grant"), ("source", &client), ("node", "a")],
        ONLINE,
    );
    eprintln!(
        "b learned the grant {} ms after member {member}, which it followed, was cut off",
        cut.elapsed().as_millis()
    );
    fleet.assert_reach(1, false, Reach::Open, "b after it moved");
    fleet.lab.heal_member(member);
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_host_started_without_etcd_enforces_opens_on_its_own_knocks_and_joins_later() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.hosts[1].stop();
    fleet.lab.stop_all();
    // b starts while no member answers: it attaches and enforces.
    fleet.hosts[1].restart(&fleet.lab);
    fleet.assert_all(Reach::Refused, "b started without etcd");
    fleet.hosts[1].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "grant"), ("source", &client)]);
    fleet.assert_reach(1, false, Reach::Open, "b's own knock without etcd");
    thread::sleep(Duration::from_secs(1));
    fleet.assert_reach(0, false, Reach::Refused, "a without etcd");
    assert_eq!(
        fleet.hosts[1].count(&[("event", "fleet_online")]),
        0,
        "{}",
        fleet.dump()
    );

    fleet.lab.start_all();
    fleet.lab.wait_healthy();
    let back = Instant::now();
    fleet.hosts[1].expect_within(&[("event", "fleet_online")], ONLINE);
    fleet.hosts[0].expect_within(
        &[("event", "fleet_grant"), ("source", &client), ("node", "b")],
        ONLINE,
    );
    eprintln!(
        "a learned the grant b made before it ever reached etcd {} ms after the cluster was healthy",
        back.elapsed().as_millis()
    );
    fleet.assert_reach(0, false, Reach::Open, "a once b published");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_grant_extended_on_one_host_is_extended_on_every_host() {
    let start = Instant::now();
    let fleet = Fleet::two("6s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    let first = Instant::now();
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client)]);
    thread::sleep(Duration::from_secs(3));
    // Knocked again: a's grant now ends 6 s from here, 9 s from the first.
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect_nth(
        &[("event", "fleet_grant"), ("source", &client)],
        2,
        Duration::from_secs(5),
    );
    while first.elapsed() < Duration::from_millis(7500) {
        thread::sleep(Duration::from_millis(100));
    }
    for i in 0..2 {
        fleet.assert_reach(
            i,
            false,
            Reach::Open,
            "7.5 s after the first knock, 4.5 s after the second",
        );
    }
    fleet.hosts[1].expect_within(
        &[("event", "expired"), ("source", &client)],
        Duration::from_secs(5),
    );
    thread::sleep(Duration::from_millis(300));
    fleet.assert_all(Reach::Refused, "after the extended grant ended");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_prefix_grant_opens_its_prefix_on_every_host_and_a_revoke_of_one_address_closes_it() {
    let rules = ssh_rule("60s") + "grant_scope = { ipv4 = 24, ipv6 = 64 }\n";
    let fleet = Fleet::start(&[(&rules, ""), (&rules, "")]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let client = fleet.lab.client_addr().to_owned();
    // The client's second address, in the same /24: carrier NAT's.
    let other = fleet.lab.add_client_addr(77);
    let from_other = |i: usize| {
        let host = SocketAddr::new(fleet.lab.host_addr(i).parse().expect("address"), PORT);
        let from = other.parse().expect("address");
        fleet
            .lab
            .client
            .tcp_connect_from(from, host, Duration::from_secs(1))
    };
    assert_eq!(from_other(1), Reach::Refused, "before any knock");

    a.knock(&fleet.lab, &["--rule", "ssh"]);
    a.expect(&[
        ("event", "grant"),
        ("source", &client),
        ("granted", "198.19.0.0/24"),
    ]);
    b.expect(&[
        ("event", "fleet_grant"),
        ("node", "a"),
        ("granted", "198.19.0.0/24"),
    ]);
    assert_eq!(from_other(1), Reach::Open, "{}", fleet.dump());
    assert_eq!(from_other(0), Reach::Open, "{}", fleet.dump());
    let keys = fleet.keys("grants/");
    assert!(
        keys.len() == 1 && keys[0].ends_with("/grants/198.19.0.0/ssh"),
        "one key, the prefix's: {keys:?}"
    );
    let status = b.status(&fleet.lab);
    assert_eq!(status["grants"][0]["prefix_len"], 24, "{status}");

    // A revoke of one address of the prefix, on a, ends the prefix's
    // grant on every host.
    let revoke = a.xknock(&fleet.lab, &["revoke", &other]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    b.expect(&[("event", "fleet_revoke"), ("node", "a")]);
    assert_eq!(from_other(1), Reach::Refused, "{}", fleet.dump());
    fleet.assert_all(Reach::Refused, "after the revoke");
    assert!(
        fleet.keys("grants/").is_empty(),
        "grant keys after the revoke: {:?}",
        fleet.keys("grants/")
    );
}

#[test]
fn a_host_whose_rule_scopes_grants_otherwise_plants_nothing_of_a_prefix_grant() {
    let scoped = ssh_rule("60s") + "grant_scope = { ipv4 = 24 }\n";
    let plain = ssh_rule("60s");
    let fleet = Fleet::start(&[(&scoped, ""), (&plain, "")]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let client = fleet.lab.client_addr().to_owned();
    a.knock(&fleet.lab, &["--rule", "ssh"]);
    a.expect(&[("event", "grant"), ("granted", "198.19.0.0/24")]);
    fleet.assert_reach(0, false, Reach::Open, "on the host knocked");
    // b's rule admits addresses alone: the /24 would widen its policy, an
    // address of it would miss the client. It plants nothing, says why,
    // and stays closed.
    let said = wait_until(Duration::from_secs(15), || {
        b.run()
            .log()
            .iter()
            .any(|line| line.contains("grant_scope differs"))
    });
    assert!(said, "{}", fleet.dump());
    assert_eq!(b.count(&[("event", "fleet_grant")]), 0, "{}", fleet.dump());
    fleet.assert_reach(1, false, Reach::Refused, "on the host that differs");
    assert!(
        b.status(&fleet.lab)["grants"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{client} at b: {}",
        fleet.dump()
    );
}
