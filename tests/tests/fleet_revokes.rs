//! Revokes in the fleet beyond the plain case (in fleet.rs): one made
//! while a host is cut off reaches it when it is back, one of a rule
//! leaves the others, `--flows` ends the client's connections on every
//! host, and an operator's grant made after a revoke stands.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lab::{
    Reach, article_config,
    fleet_lab::FleetLab,
    fleet_run::{Fleet, ONLINE, PORT, ssh_rule},
};

#[test]
fn a_revoke_made_while_a_host_is_cut_off_reaches_it_when_it_is_back() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.assert_all(Reach::Refused, "before");
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    fleet.assert_reach(1, false, Reach::Open, "b with a's grant");

    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    fleet.assert_reach(0, false, Reach::Refused, "a after its revoke");
    // Cut off, b keeps what it knows: never closed (nor opened) by etcd's
    // absence.
    fleet.assert_reach(
        1,
        false,
        Reach::Open,
        "b cut off, before it hears of the revoke",
    );

    fleet.lab.reconnect_host(1);
    let reconnected = Instant::now();
    fleet.hosts[1].expect_within(
        &[
            ("event", "fleet_revoke"),
            ("source", &client),
            ("node", "a"),
        ],
        ONLINE,
    );
    eprintln!(
        "b applied the revoke {} ms after it was reconnected",
        reconnected.elapsed().as_millis()
    );
    thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Refused, "2 s after b is back");
    }
    assert!(
        fleet.keys("grants/").is_empty(),
        "the revoked grant was published again: {:?}\n{}",
        fleet.keys("grants/"),
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_revoke_of_one_rule_closes_that_rule_alone_on_every_host() {
    let start = Instant::now();
    let web_port = PORT + 8000;
    let rules = format!(
        "{}[[rule]]\nname = \"web\"\nsequence = [\"udp:5101\", \"tcp:5102\"]\n\
         sequence_timeout = \"5s\"\nopen_for = \"60s\"\nprotect = [\"tcp:{web_port}\"]\n",
        ssh_rule("60s")
    );
    let mut fleet = Fleet::start(&[(&rules, ""), (&rules, "")]);
    let client = fleet.lab.client_addr().to_owned();
    for i in 0..2 {
        fleet.lab.host_tcp_listener(i, web_port);
    }
    let web = |fleet: &Fleet, i: usize| fleet.lab.client_reach(i, web_port);
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "web"]);
    for rule in ["ssh", "web"] {
        fleet.hosts[1].expect(&[
            ("event", "fleet_grant"),
            ("source", &client),
            ("rule", rule),
        ]);
    }
    for i in 0..2 {
        fleet.assert_reach(i, false, Reach::Open, "ssh granted");
        assert_eq!(
            web(&fleet, i),
            Reach::Open,
            "web on host {i}\n{}",
            fleet.dump()
        );
    }

    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client, "--rule", "web"]);
    assert!(
        revoke.status.success(),
        "revoke --rule web on b: {revoke:?}"
    );
    let revoked = fleet.hosts[0].expect(&[
        ("event", "fleet_revoke"),
        ("source", &client),
        ("node", "b"),
    ]);
    assert_eq!(revoked["rule"], "web", "{revoked}");
    thread::sleep(Duration::from_secs(1));
    for i in 0..2 {
        assert_eq!(
            web(&fleet, i),
            Reach::Refused,
            "web on host {i} after the revoke\n{}",
            fleet.dump()
        );
        fleet.assert_reach(i, false, Reach::Open, "ssh, not revoked");
    }
    let keys = fleet.keys("grants/");
    assert!(
        keys.len() == 1 && keys[0].ends_with("/ssh"),
        "grant keys after revoking web: {keys:?}"
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn an_operator_grant_shorter_than_open_for_made_after_a_revoke_stands() {
    let start = Instant::now();
    let fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on b: {revoke:?}");
    fleet.hosts[0].expect(&[
        ("event", "fleet_revoke"),
        ("source", &client),
        ("node", "b"),
    ]);
    fleet.assert_all(Reach::Refused, "after the revoke");

    // Seconds later the operator admits the client again, for 20 s (less
    // than the rule's open_for): a grant made after the revoke.
    thread::sleep(Duration::from_secs(1));
    let granted = fleet.hosts[0].xknock(
        &fleet.lab,
        &["grant", &client, "--rule", "ssh", "--for", "20s"],
    );
    assert!(granted.status.success(), "grant on a: {granted:?}");
    fleet.assert_reach(0, false, Reach::Open, "a after `xknock grant --for 20s`");
    let learned = fleet.hosts[1].wait(
        &[
            ("event", "fleet_grant"),
            ("source", &client),
            ("node", "a"),
            ("rule", "ssh"),
        ],
        Duration::from_secs(5),
    );
    // Several sweeps later it still stands, here and on b.
    thread::sleep(Duration::from_secs(2));
    fleet.assert_reach(
        0,
        false,
        Reach::Open,
        "a 2 s after `xknock grant --for 20s`",
    );
    assert!(
        learned.is_some() && fleet.hosts[1].count(&[("event", "fleet_grant")]) == 2,
        "b never learned the operator's grant\n{}",
        fleet.dump()
    );
    fleet.assert_reach(1, false, Reach::Open, "b with a's operator grant");
    eprintln!("took {} ms", start.elapsed().as_millis());
}

/// A TCP echo service on a port of a host's namespace, until it drops.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(lab: &FleetLab, i: usize, port: u16) -> Echo {
        let listener = lab.hosts[i].within(move || {
            TcpListener::bind(("::", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut connections: Vec<TcpStream> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true).expect("nonblocking");
                    connections.push(stream);
                }
                for stream in &mut connections {
                    let mut buf = [0u8; 64];
                    if let Ok(n @ 1..) = stream.read(&mut buf) {
                        drop(stream.write_all(&buf[..n]));
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

/// A connection from the client to host `i`'s `port`, if it opens.
fn connect(lab: &FleetLab, i: usize, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::new(lab.host_addr(i).parse().expect("an address"), port);
    lab.client
        .within(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
}

/// Whether `stream` still carries a word there and back within a second.
fn echoes(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    // A timeout, a reset or the end: the connection no longer carries.
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

#[test]
fn a_revoke_with_flows_ends_the_clients_connections_on_every_host() {
    let start = Instant::now();
    let echo_port = PORT + 2000;
    let rules = article_config("60s", &format!("\"tcp:{PORT}\", \"tcp:{echo_port}\""));
    let fleet = Fleet::start(&[(&rules, ""), (&rules, "")]);
    let client = fleet.lab.client_addr().to_owned();
    let _echoes: Vec<Echo> = (0..2)
        .map(|i| Echo::start(&fleet.lab, i, echo_port))
        .collect();
    for i in 0..2 {
        assert_eq!(
            fleet.lab.client_reach(i, echo_port),
            Reach::Refused,
            "host {i} before"
        );
    }
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client)]);
    let mut streams: Vec<TcpStream> = (0..2)
        .map(|i| {
            connect(&fleet.lab, i, echo_port)
                .unwrap_or_else(|| panic!("no connection to host {i}\n{}", fleet.dump()))
        })
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        assert!(echoes(stream), "host {i}'s echo");
    }

    // Without --flows: the grants go, the connections stay.
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on b: {revoke:?}");
    let revoked = fleet.hosts[0].expect(&[("event", "fleet_revoke"), ("node", "b")]);
    assert_eq!(
        revoked["detail"], "1 grant(s), 0 flow(s) removed",
        "{revoked}"
    );
    for (i, stream) in streams.iter_mut().enumerate() {
        assert!(
            echoes(stream),
            "host {i}'s connection after a revoke without --flows"
        );
        assert_eq!(
            fleet.lab.client_reach(i, echo_port),
            Reach::Refused,
            "a new connection to host {i}"
        );
    }

    // With --flows: they end too, on b (where it is run) and on a.
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client, "--flows"]);
    assert!(revoke.status.success(), "revoke --flows on b: {revoke:?}");
    fleet.hosts[0].expect_nth(
        &[("event", "fleet_revoke"), ("node", "b")],
        2,
        Duration::from_secs(5),
    );
    let detail = fleet.hosts[0]
        .run()
        .events()
        .into_iter()
        .filter(|e| e["event"] == "fleet_revoke")
        .nth(1)
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        detail.starts_with("0 grant(s), ") && !detail.contains(" 0 flow(s)"),
        "a's second fleet_revoke: {detail}\n{}",
        fleet.dump()
    );
    for (i, stream) in streams.iter_mut().enumerate() {
        assert!(
            !echoes(stream),
            "host {i}'s connection after revoke --flows\n{}",
            fleet.dump()
        );
    }
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_revoke_with_flows_made_while_a_host_is_cut_off_ends_its_connections_when_it_is_back() {
    let start = Instant::now();
    let echo_port = PORT + 2000;
    // Grants that end while b is away; the connection they admitted lives
    // on (flows outlive grants) until a revoke --flows ends it.
    let rules = article_config("4s", &format!("\"tcp:{PORT}\", \"tcp:{echo_port}\""));
    let mut fleet = Fleet::start(&[(&rules, ""), (&rules, "")]);
    let client = fleet.lab.client_addr().to_owned();
    let _echoes: Vec<Echo> = (0..2)
        .map(|i| Echo::start(&fleet.lab, i, echo_port))
        .collect();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client)]);
    let mut to_b = connect(&fleet.lab, 1, echo_port)
        .unwrap_or_else(|| panic!("no connection to b\n{}", fleet.dump()));
    assert!(echoes(&mut to_b), "b's echo");

    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &client, "--flows"]);
    assert!(revoke.status.success(), "revoke --flows on a: {revoke:?}");
    fleet.hosts[1].expect_within(
        &[("event", "expired"), ("source", &client)],
        Duration::from_secs(8),
    );
    assert!(
        echoes(&mut to_b),
        "b's connection, its grant over, b cut off"
    );

    fleet.lab.reconnect_host(1);
    fleet.hosts[1].expect_nth(&[("event", "fleet_online")], 2, ONLINE);
    thread::sleep(Duration::from_secs(2));
    assert!(
        !echoes(&mut to_b),
        "b is back and knows of the revoke --flows, yet the client's connection still carries\n{}",
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn revoke_and_status_reach_the_fleet_with_the_first_member_cut_off_from_its_quorum() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    fleet.hosts[0].knock(&fleet.lab, &["--rule", "ssh"]);
    fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    // The first endpoint the configuration lists: still up, answering,
    // but without a quorum behind it.
    fleet.lab.partition_member(0);
    assert!(
        lab::fleet_run::wait_until(Duration::from_secs(10), || !fleet.lab.linearizable_read(0)),
        "member 0 still serves while partitioned"
    );
    fleet.lab.wait_quorum();
    let revoke = fleet.hosts[1].xknock(&fleet.lab, &["revoke", &client]);
    assert!(
        revoke.status.success(),
        "revoke on b with member 0 partitioned and members 1 and 2 a quorum: {}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    fleet.hosts[0].expect_within(
        &[
            ("event", "fleet_revoke"),
            ("source", &client),
            ("node", "b"),
        ],
        ONLINE,
    );
    fleet.assert_all(Reach::Refused, "after the revoke");
    let status = fleet.hosts[0].status(&fleet.lab);
    let nodes: Vec<&str> = status["fleet"]["hosts"]
        .as_array()
        .map(|hosts| hosts.iter().filter_map(|h| h["node"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        nodes,
        ["a", "b"],
        "status with member 0 partitioned: {status:#}"
    );
    fleet.lab.heal_member(0);
    eprintln!("took {} ms", start.elapsed().as_millis());
}

#[test]
fn a_long_operator_grant_revoked_while_a_host_is_cut_off_stays_revoked_when_it_is_back() {
    let start = Instant::now();
    let mut fleet = Fleet::two("60s");
    let client = fleet.lab.client_addr().to_owned();
    // An operator's grant for longer than the rule's open_for.
    let granted = fleet.hosts[0].xknock(
        &fleet.lab,
        &["grant", &client, "--rule", "ssh", "--for", "10m"],
    );
    assert!(granted.status.success(), "grant on a: {granted:?}");
    let learned =
        fleet.hosts[1].expect(&[("event", "fleet_grant"), ("source", &client), ("node", "a")]);
    assert!(
        learned["expires_in_secs"]
            .as_f64()
            .is_some_and(|s| s > 590.0),
        "{learned}"
    );
    fleet.assert_all(Reach::Open, "the operator's grant");

    fleet.lab.isolate_host(1);
    fleet.hosts[1].expect_within(&[("event", "fleet_offline")], ONLINE);
    let revoke = fleet.hosts[0].xknock(&fleet.lab, &["revoke", &client]);
    assert!(revoke.status.success(), "revoke on a: {revoke:?}");
    fleet.assert_reach(0, false, Reach::Refused, "a after its revoke");

    fleet.lab.reconnect_host(1);
    fleet.hosts[1].expect_nth(&[("event", "fleet_online")], 2, ONLINE);
    thread::sleep(Duration::from_secs(3));
    let keys = fleet.keys("grants/");
    for i in 0..2 {
        assert_eq!(
            fleet.reach(i),
            Reach::Refused,
            "host {i}: the revoked grant is back (grant keys: {keys:?})\n{}",
            fleet.dump()
        );
    }
    assert!(
        keys.is_empty(),
        "the revoked grant was published again: {keys:?}\n{}",
        fleet.dump()
    );
    eprintln!("took {} ms", start.elapsed().as_millis());
}
