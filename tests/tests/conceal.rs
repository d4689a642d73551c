//! Concealment proven against the kernel itself: with `conceal = "closed"`
//! (the default), every probe at a knock port or a protected port gets, field
//! by field, the answer the server's kernel gives at a port where nothing
//! listens, or no answer where the kernel gives none; with `conceal = "drop"`
//! it gets nothing. Probes are raw frames from the client's veth, so every
//! field of them is ours to set.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{net::IpAddr, time::Duration};

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6, Xknock, article_config,
    probing::{
        CLOSED_TCP, CLOSED_UDP, KNOCK_TCP, KNOCK_UDP, PROTECTED_TCP, PROTECTED_UDP, Prober,
        port_zero_from_steered, show, source_seed,
    },
    wire::{ACK, FIN, PSH, Probe, RST, SYN, URG},
};

/// Long enough for the kernel to resolve the client's address first.
const WAIT: Duration = Duration::from_millis(400);

/// Builds a probe for a (TCP port, UDP port).
type BuildProbe = Box<dyn Fn(u16, u16) -> Probe>;

/// The server with xknock guarding 22 and 51820, and services listening on
/// every knock and protected port: a packet xknock let through would get a
/// SYN+ACK or an echo, never a closed port's answer.
fn guarded_lab(conceal: &str) -> (Lab, Xknock) {
    let lab = Lab::new();
    for port in [PROTECTED_TCP, KNOCK_TCP, 6742] {
        lab.tcp_listener(port);
    }
    for port in [PROTECTED_UDP, KNOCK_UDP] {
        lab.udp_echo(port);
    }
    let config = format!(
        "conceal = \"{conceal}\"\n{}",
        article_config("30s", "\"tcp:22\", \"udp:51820\"")
    );
    let xknock = Xknock::start(&lab, &config, &[], false);
    (lab, xknock)
}

/// A probe of each kind nmap and scapy send, for one family: what to call
/// it, how to build it for a port, and whether the kernel answers it at a
/// closed port (so the comparison cannot pass by nobody answering).
fn probes(src: IpAddr, dst: IpAddr) -> Vec<(&'static str, BuildProbe, bool)> {
    let tcp =
        move |flags: u8| move |tcp_port: u16, _udp_port: u16| Probe::tcp(src, dst, tcp_port, flags);
    vec![
        ("SYN (nmap -sS)", Box::new(tcp(SYN)), true),
        ("ACK (nmap -sA)", Box::new(tcp(ACK)), true),
        ("FIN (nmap -sF)", Box::new(tcp(FIN)), true),
        ("NULL (nmap -sN)", Box::new(tcp(0)), true),
        ("Xmas (nmap -sX)", Box::new(tcp(FIN | PSH | URG)), true),
        ("SYN+ACK", Box::new(tcp(SYN | ACK)), true),
        (
            "SYN with DSCP and ECN bits",
            Box::new(move |port, _| Probe {
                tos: 0x2b,
                ..Probe::tcp(src, dst, port, SYN)
            }),
            true,
        ),
        (
            "ACK+PSH with 100 bytes of data",
            Box::new(move |port, _| Probe {
                payload: vec![0x42; 100],
                ..Probe::tcp(src, dst, port, ACK | PSH)
            }),
            true,
        ),
        (
            "FIN with 33 bytes of data",
            Box::new(move |port, _| Probe {
                payload: vec![0x17; 33],
                ..Probe::tcp(src, dst, port, FIN)
            }),
            true,
        ),
        ("RST", Box::new(tcp(RST)), false),
        ("RST+ACK", Box::new(tcp(RST | ACK)), false),
        (
            "SYN with a wrong checksum (nmap --badsum)",
            Box::new(move |port, _| Probe {
                bad_checksum: true,
                ..Probe::tcp(src, dst, port, SYN)
            }),
            false,
        ),
        (
            "UDP datagram (nmap -sU)",
            Box::new(move |_, port| Probe::udp(src, dst, port, 12)),
            true,
        ),
        (
            "UDP datagram of odd length with DSCP and ECN bits",
            Box::new(move |_, port| Probe {
                tos: 0xb9,
                ..Probe::udp(src, dst, port, 7)
            }),
            true,
        ),
        (
            "UDP datagram longer than an ICMP error may quote",
            Box::new(move |_, port| Probe::udp(src, dst, port, 1300)),
            true,
        ),
        (
            "UDP datagram with a wrong checksum",
            Box::new(move |_, port| Probe {
                bad_checksum: true,
                ..Probe::udp(src, dst, port, 12)
            }),
            false,
        ),
    ]
}

#[test]
fn knock_and_protected_ports_answer_field_by_field_as_a_closed_port() {
    let (lab, xknock) = guarded_lab("closed");
    let prober = Prober::new(&lab);
    let mut compared = 0;
    let mut answered = 0;
    for (src, dst) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        for (kind, probe, kernel_answers) in probes(src, dst) {
            let closed = prober.answers(&probe(CLOSED_TCP, CLOSED_UDP), WAIT);
            assert_eq!(
                closed.len(),
                usize::from(kernel_answers),
                "{kind} to a closed port of {dst}: the kernel answered\n{}",
                show(&closed)
            );
            for (role, tcp_port, udp_port) in [
                ("knock", KNOCK_TCP, KNOCK_UDP),
                ("protected", PROTECTED_TCP, PROTECTED_UDP),
            ] {
                let answers = prober.answers(&probe(tcp_port, udp_port), WAIT);
                assert_eq!(
                    answers,
                    closed,
                    "{kind} to the {role} port of {dst}:\nxknock answered\n{}\nthe kernel, at a closed port\n{}",
                    show(&answers),
                    show(&closed)
                );
                compared += 1;
                answered += answers.len();
            }
        }
    }
    println!("conceal: {compared} probes compared with the kernel's answers, {answered} answered");
    let (status, log) = xknock.stop();
    assert!(status.success(), "{log:?}");
    // The answers were the host's, to packets xknock steered: it counted
    // every probe it steered and every answer it gave back its ports.
    let answers = log
        .iter()
        .find_map(|line| line.strip_prefix("xknock: answers: "))
        .unwrap_or_else(|| panic!("no answer counters in {log:?}"));
    let count = |name: &str| {
        answers
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, n)| n.parse::<usize>().expect("count"))
    };
    assert_eq!(count("steered_to_host"), compared, "{answers}");
    assert_eq!(count("answer_restored"), answered, "{answers}");
    assert_eq!(count("silent_unmatched"), 0, "{answers}");
    assert_eq!(count("silent_unrecorded"), 0, "{answers}");
}

/// The host's ICMP budget for a peer is one, shared by its closed ports
/// and the concealed ones: drained at a closed port, it leaves nothing for
/// a knock port either.
#[test]
fn port_unreachables_run_dry_as_the_kernels_do() {
    let (lab, _xknock) = guarded_lab("closed");
    let prober = Prober::new(&lab);
    let (src, dst): (IpAddr, IpAddr) = (CLIENT_V4.parse().unwrap(), SERVER_V4.parse().unwrap());
    // Back to back: the per-peer budget (a burst of 6, then one a second)
    // runs out within the first burst, and stays out for the second.
    let burst = |port: u16| {
        prober.wire.drain();
        (0..10)
            .filter(|_| {
                let probe = Probe::udp(src, dst, port, 12);
                !prober
                    .wire
                    .exchange(
                        &probe,
                        prober.server_mac,
                        prober.client_mac,
                        Duration::from_millis(30),
                    )
                    .is_empty()
            })
            .count()
    };
    let kernel = burst(CLOSED_UDP);
    let xknock = burst(KNOCK_UDP);
    println!("conceal: port unreachables for 10 datagrams: kernel {kernel}, xknock {xknock}");
    assert!(
        (1..10).contains(&kernel),
        "the kernel did not limit its answers ({kernel})"
    );
    assert_eq!(
        xknock, 0,
        "the knock port answered from a budget of its own"
    );
}

#[test]
fn with_conceal_drop_nothing_answers_at_knock_and_protected_ports() {
    let (lab, _xknock) = guarded_lab("drop");
    let prober = Prober::new(&lab);
    for (src, dst) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        for (kind, probe, kernel_answers) in probes(src, dst) {
            if !kernel_answers {
                continue;
            }
            assert_eq!(
                prober.answers(&probe(CLOSED_TCP, CLOSED_UDP), WAIT).len(),
                1,
                "{kind}"
            );
            for (tcp_port, udp_port) in [(KNOCK_TCP, KNOCK_UDP), (PROTECTED_TCP, PROTECTED_UDP)] {
                let answers = prober.answers(&probe(tcp_port, udp_port), WAIT);
                assert!(answers.is_empty(), "{kind} to {dst}:\n{}", show(&answers));
            }
        }
    }
}

/// Loads `ruleset` into the server's nftables.
fn nft(lab: &Lab, ruleset: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("host.nft");
    std::fs::write(&path, ruleset).expect("write ruleset");
    let out = lab
        .server
        .command("nft")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host firewall on the server changes closed ports and concealed ones
/// alike, because a concealed port's answer is a closed port's: with a
/// stateful firewall that lets unused ports answer (conntrack, invalid
/// packets dropped), the answers still match field by field; with one
/// that drops every unused port, both are silent.
#[test]
fn a_host_firewall_treats_concealed_ports_as_closed_ones() {
    let (lab, _xknock) = guarded_lab("closed");
    let prober = Prober::new(&lab);
    let stateful = "table inet host {\n chain input {\n  type filter hook input priority 0; policy accept;\n  ct state invalid drop\n  ct state established,related accept\n  tcp dport 22 accept\n }\n}\n";
    let closed = "table inet host {\n chain input {\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n  tcp dport 22 accept\n  udp dport 51820 accept\n }\n}\n";
    // No per-peer ICMP limit, so that every UDP probe is answered: the
    // shared budget has a test of its own.
    for limit in ["net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"] {
        let out = lab
            .server
            .command("sysctl")
            .args(["-w", limit])
            .output()
            .expect("sysctl");
        assert!(out.status.success(), "sysctl -w {limit}");
    }
    for (name, ruleset, answering) in [("stateful", stateful, true), ("dropping", closed, false)] {
        nft(&lab, &format!("flush ruleset\n{ruleset}"));
        let mut answered = 0;
        for (src, dst) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
            let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            for (kind, probe, kernel_answers) in probes(src, dst) {
                let closed = prober.answers(&probe(CLOSED_TCP, CLOSED_UDP), WAIT);
                answered += closed.len();
                if !answering || !kernel_answers {
                    assert!(closed.is_empty(), "{name}: {kind}:\n{}", show(&closed));
                }
                for (tcp_port, udp_port) in [(KNOCK_TCP, KNOCK_UDP), (PROTECTED_TCP, PROTECTED_UDP)]
                {
                    let answers = prober.answers(&probe(tcp_port, udp_port), WAIT);
                    assert_eq!(
                        answers,
                        closed,
                        "{name} firewall, {kind} to port {tcp_port}/{udp_port} of {dst}:\n{}\nat a closed port\n{}",
                        show(&answers),
                        show(&closed)
                    );
                }
            }
        }
        // The stateful firewall drops what conntrack finds invalid (a FIN
        // or an ACK out of nowhere), and lets the rest be answered.
        println!("conceal: behind the {name} firewall, {answered} probes answered at closed ports");
        assert!(
            !answering || answered >= 10,
            "{name}: only {answered} answered"
        );
    }
}

/// A probe of port 0 from the very source port a concealed flow was
/// steered with gets the host's answer as the host made it: from port 0.
/// Were the concealed flow's ports put in it, sweeping port 0 from every
/// source port after a scan would name the concealed ports.
#[test]
fn port_zero_answers_from_port_zero_even_from_a_steered_source_port() {
    let (lab, xknock) = guarded_lab("closed");
    let prober = Prober::new(&lab);
    let seed = source_seed(&xknock);
    for (src, dst) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let probe = Probe::tcp(src, dst, KNOCK_TCP, SYN);
        let answers = prober.answers(&probe, WAIT);
        assert_eq!(answers.len(), 1, "{dst}: the knock port answers as closed");
        assert!(
            answers[0].contains(&("tcp.src_port".into(), "PORT".into())),
            "{dst}: from the knock port\n{}",
            show(&answers)
        );
        let zero = port_zero_from_steered(seed, &probe);
        let answers = prober.answers(&zero, WAIT);
        assert_eq!(answers.len(), 1, "{dst}: port 0 answers");
        assert!(
            answers[0].contains(&("tcp.src_port".into(), "PORT".into()))
                && answers[0].contains(&("tcp.dst_port".into(), zero.src_port.to_string())),
            "{dst}: from port 0, to the probe's port\n{}",
            show(&answers)
        );
    }
}
