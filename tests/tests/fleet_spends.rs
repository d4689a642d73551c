//! SPA packets in the fleet: one accepted on one host is a replay on
//! every other, one sent to two hosts at once opens once, and while etcd
//! is away a packet is refused (`offline_spend = "refuse"`) or decided on
//! the host's own records (`"local"`) and spent for all once it is back.
//! One-time and rotating sequences are in fleet_sequences.rs.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    net::UdpSocket,
    thread,
    time::{Duration, Instant},
};

use lab::{
    Reach,
    fleet_lab::FleetLab,
    fleet_run::{Fleet, ONLINE, PORT},
    fwknop::{FwknopKeys, client_packet},
    require_program,
};

const SPA_PORT: u16 = 62201;

/// An `[[spa]]` entry "fwknop" with `keys`, opening `PORT` for `open_for`.
fn spa_rules(keys: &FwknopKeys, open_for: &str) -> String {
    format!(
        "[[spa]]\nname = \"fwknop\"\nlisten = \"udp:{SPA_PORT}\"\nkey_base64 = \"{}\"\n\
         hmac_key_base64 = \"{}\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:{PORT}\"]\n",
        keys.key_base64, keys.hmac_key_base64
    )
}

/// A packet from the real fwknop client asking `PORT` for the client's
/// IPv4 address, sealed once (to send as often as a test likes).
fn spa_packet(lab: &FleetLab, keys: &FwknopKeys) -> Vec<u8> {
    require_program("fwknop", "fwknop-client");
    client_packet(
        keys,
        &[
            "-A",
            &format!("tcp/{PORT}"),
            "-a",
            lab.client_addr(),
            "-D",
            lab.host_addr(0),
        ],
    )
    .into_bytes()
}

/// Sends `payload` from the client to host `i`'s SPA port.
fn send_spa(lab: &FleetLab, i: usize, payload: &[u8]) {
    let payload = payload.to_vec();
    let to = (lab.host_addr(i).to_owned(), SPA_PORT);
    lab.client.within(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.send_to(&payload, to).expect("send SPA packet");
    });
}

#[test]
fn an_spa_packet_accepted_on_one_host_is_a_replay_on_every_other() {
    let start = Instant::now();
    let keys = FwknopKeys::generate();
    let rules = spa_rules(&keys, "3s");
    let fleet = Fleet::start(&[(&rules, ""), (&rules, "")]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let client = fleet.lab.client_addr().to_owned();
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "before SPA");
    }

    let packet = spa_packet(&fleet.lab, &keys);
    send_spa(&fleet.lab, 0, &packet);
    a.expect(&[("event", "spa_grant"), ("rule", "fwknop")]);
    fleet.assert_reach(0, false, Reach::Open, "a after the SPA packet");
    b.expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    fleet.assert_reach(1, false, Reach::Open, "b with a's SPA grant");
    assert_eq!(
        fleet.keys("spent/").len(),
        1,
        "one spend recorded: {:?}",
        fleet.keys("")
    );

    // Both grants end (3 s); the same bytes sent to b open nothing.
    a.expect_within(
        &[("event", "expired"), ("source", &client)],
        Duration::from_secs(8),
    );
    thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "after the grant expired");
    }
    send_spa(&fleet.lab, 1, &packet);
    let refused = b.expect(&[("event", "spa_refused")]);
    assert_eq!(refused["reason"], "replay", "{refused:#}\n{}", fleet.dump());
    eprintln!("b refused the replay: {refused}");
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "after the replay to b");
    }
    assert_eq!(b.count(&[("event", "spa_grant")]), 0, "{}", fleet.dump());
    assert_eq!(a.count(&[("event", "fleet_grant")]), 0, "{}", fleet.dump());

    // A fresh packet sent to both hosts at once opens on one of them.
    let fresh = spa_packet(&fleet.lab, &keys);
    thread::scope(|scope| {
        let to_a = scope.spawn(|| send_spa(&fleet.lab, 0, &fresh));
        send_spa(&fleet.lab, 1, &fresh);
        to_a.join().expect("send to a");
    });
    let verdicts = |i: usize| {
        let host = &fleet.hosts[i];
        let came = lab::fleet_run::wait_until(Duration::from_secs(10), || {
            host.count(&[("event", "spa_grant")]) + host.count(&[("event", "spa_refused")]) > 1
        });
        assert!(came, "node {} decided nothing\n{}", host.node, fleet.dump());
        host.count(&[("event", "spa_grant")])
    };
    // Each had one verdict before: a a grant, b a refusal.
    let (a_grants, b_grants) = (verdicts(0) - 1, verdicts(1));
    assert_eq!(
        a_grants + b_grants,
        1,
        "one packet sent to both opened {a_grants} time(s) on a, {b_grants} on b\n{}",
        fleet.dump()
    );
    let loser = if a_grants == 1 { b } else { a };
    let refusals: Vec<String> = loser
        .run()
        .events()
        .into_iter()
        .filter(|e| e["event"] == "spa_refused")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        refusals.last().map(String::as_str),
        Some("replay"),
        "node {}: {refusals:?}",
        loser.node
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn without_etcd_an_spa_packet_is_refused_unless_offline_spend_is_local() {
    let start = Instant::now();
    let keys = FwknopKeys::generate();
    let rules = spa_rules(&keys, "60s");
    // a refuses (the default), b decides on its own.
    let mut fleet = Fleet::start(&[(&rules, ""), (&rules, "offline_spend = \"local\"\n")]);
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "before");
    }
    fleet.lab.stop_all();
    for host in &fleet.hosts {
        host.expect_within(&[("event", "fleet_offline")], ONLINE);
    }
    // `status` still answers, and says why it lists no host.
    let status = fleet.hosts[0].status(&fleet.lab);
    assert!(
        status["fleet"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
            && status["fleet"]["hosts"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "status without etcd: {status:#}"
    );

    let packet = spa_packet(&fleet.lab, &keys);
    send_spa(&fleet.lab, 0, &packet);
    let refused = fleet.hosts[0].expect_within(&[("event", "spa_refused")], ONLINE);
    assert_eq!(refused["reason"], "fleet_unreachable", "{refused:#}");
    fleet.assert_reach(0, false, Reach::Refused, "a refusing without etcd");
    assert_eq!(fleet.hosts[0].count(&[("event", "spa_grant")]), 0);

    let other = spa_packet(&fleet.lab, &keys);
    send_spa(&fleet.lab, 1, &other);
    fleet.hosts[1].expect_within(&[("event", "spa_grant"), ("rule", "fwknop")], ONLINE);
    fleet.assert_reach(1, false, Reach::Open, "b, offline_spend = local");
    fleet.assert_reach(0, false, Reach::Refused, "a while etcd is away");

    // Back: b records its spend and publishes its grant, which a plants.
    fleet.lab.start_all();
    fleet.lab.wait_healthy();
    fleet.hosts[0].expect_within(
        &[
            ("event", "fleet_grant"),
            ("source", fleet.lab.client_addr()),
            ("node", "b"),
        ],
        ONLINE,
    );
    fleet.assert_reach(0, false, Reach::Open, "a once b's grant reached it");
    assert!(
        lab::fleet_run::wait_until(Duration::from_secs(10), || fleet.keys("spent/").len() == 1),
        "b's offline spend recorded: {:?}",
        fleet.keys("")
    );
    // The packet b accepted on its own is spent for a too now.
    send_spa(&fleet.lab, 0, &other);
    fleet.hosts[0].expect_nth(&[("event", "spa_refused")], 2, Duration::from_secs(5));
    let replayed = fleet.hosts[0]
        .run()
        .events()
        .into_iter()
        .rfind(|e| e["event"] == "spa_refused")
        .expect("a second refusal");
    assert_eq!(replayed["reason"], "replay", "{replayed}\n{}", fleet.dump());
    assert_eq!(
        fleet.hosts[0].count(&[("event", "spa_grant")]),
        0,
        "{}",
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}
