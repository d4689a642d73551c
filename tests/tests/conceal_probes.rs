//! Concealment against probes that only the kernel answers right: IPv4
//! options, IPv6 option headers, fragments, the IPv4 ID counter, flow
//! labels, and a source-routed scan. Each test compares, field by field,
//! what a knock port and a protected port answer (both with a listener
//! behind them) with what a closed port of the same server answers, asserts
//! what the kernel does at the closed port (so no comparison passes by
//! nobody answering), and ends by asserting that no stopped packet reached
//! a listener.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{net::IpAddr, time::Duration};

use lab::{
    CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6,
    probing::{
        CLOSED_TCP, CLOSED_UDP, CONCEALED, Fields, Guarded, KNOCK_UDP, PROTECTED_UDP, Prober,
        port_zero_from_steered, show, source_seed, sysctl, unlimited_icmp,
    },
    wire::{Ext, Probe, SYN},
};

/// Long enough for the kernel to resolve the client's address first.
const WAIT: Duration = Duration::from_millis(400);

fn v4() -> (IpAddr, IpAddr) {
    (CLIENT_V4.parse().unwrap(), SERVER_V4.parse().unwrap())
}

fn v6() -> (IpAddr, IpAddr) {
    (CLIENT_V6.parse().unwrap(), SERVER_V6.parse().unwrap())
}

/// Builds a probe for a (TCP port, UDP port).
type BuildProbe = Box<dyn Fn(u16, u16) -> Probe>;
/// Builds a probe for a (TCP port, UDP port, source port).
type BuildFrom = Box<dyn Fn(u16, u16, u16) -> Probe>;

/// A TCP SYN and a UDP datagram of 12 bytes to `port`, for a (TCP, UDP)
/// pair of ports.
fn syn_and_udp(src: IpAddr, dst: IpAddr) -> [(&'static str, BuildProbe); 2] {
    [
        (
            "SYN",
            Box::new(move |tcp, _| Probe::tcp(src, dst, tcp, SYN)),
        ),
        ("UDP", Box::new(move |_, udp| Probe::udp(src, dst, udp, 12))),
    ]
}

/// What the kernel sends back, in short: "RST", "ICMP 3/3", or "silence"
/// (for several answers, each).
fn kind(answers: &[Fields]) -> String {
    if answers.is_empty() {
        return "silence".into();
    }
    let get = |fields: &Fields, name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    answers
        .iter()
        .map(|fields| match get(fields, "icmp.type") {
            Some(t) => format!("ICMP {t}/{}", get(fields, "icmp.code").unwrap_or_default()),
            None => "RST".into(),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Compares what the concealed ports answer to `probe` (the pieces of it
/// that `pick` picks, in that order; all when empty) with the closed
/// ports' answer, which must be `expect` (see `kind`); returns how many of
/// the two differ.
fn compare(
    prober: &Prober,
    name: &str,
    probe: &dyn Fn(u16, u16) -> Probe,
    pick: &[usize],
    expect: &str,
) -> usize {
    let answers = |probe: Probe| {
        let frames = probe.frames(prober.server_mac, prober.client_mac);
        let frames = if pick.is_empty() {
            frames
        } else {
            pick.iter().map(|&i| frames[i].clone()).collect()
        };
        prober.batch(&[(frames, &probe)], WAIT).pop().expect("one")
    };
    let closed = answers(probe(CLOSED_TCP, CLOSED_UDP));
    assert_eq!(
        kind(&closed),
        expect,
        "{name} at a closed port: the kernel answered\n{}",
        show(&closed)
    );
    let mut differ = 0;
    for (role, tcp, udp) in CONCEALED {
        let concealed = answers(probe(tcp, udp));
        differ += usize::from(differs(name, role, &concealed, &closed));
    }
    println!("{name}: closed port {expect}");
    differ
}

/// Whether the answers at a concealed port differ from the closed port's
/// (shown when they do).
fn differs(name: &str, role: &str, concealed: &[Fields], closed: &[Fields]) -> bool {
    if concealed == closed {
        return false;
    }
    eprintln!(
        "DIFFERS: {name} at the {role} port:\nxknock:\n{}\nthe kernel, at a closed port:\n{}",
        show(concealed),
        show(closed)
    );
    true
}

/// IPv4 options on a SYN and a UDP datagram: the kernel echoes Record
/// Route and Timestamp in its RST or port unreachable, drops loose and
/// strict source routes (accept_source_route is off), and answers a bad
/// option length or a CIPSO option with a parameter problem. The knock and
/// protected ports answer each exactly so.
#[test]
fn ipv4_options_get_the_kernels_answers_at_concealed_ports() {
    let guarded = Guarded::start(|lab| unlimited_icmp(&lab.server));
    let prober = Prober::new(&guarded.lab);
    let (src, dst) = v4();
    let IpAddr::V4(server) = dst else {
        unreachable!()
    };
    let route = |kind: u8| {
        let mut option = vec![kind, 7, 4];
        option.extend_from_slice(&server.octets());
        option
    };
    let options: Vec<(&str, Vec<u8>, [&str; 2])> = vec![
        (
            "Record Route",
            [vec![7, 15, 4], vec![0; 12]].concat(),
            ["RST", "ICMP 3/3"],
        ),
        (
            "Timestamp",
            [vec![68, 12, 5, 0], vec![0; 8]].concat(),
            ["RST", "ICMP 3/3"],
        ),
        ("LSRR", route(131), ["silence", "silence"]),
        ("SSRR", route(137), ["silence", "silence"]),
        (
            "an option longer than the header",
            vec![7, 40, 4, 0],
            ["ICMP 12/0", "ICMP 12/0"],
        ),
        (
            "CIPSO",
            vec![134, 10, 0, 0, 0, 3, 1, 4, 0, 0],
            ["ICMP 12/0", "ICMP 12/0"],
        ),
    ];
    let mut differ = 0;
    let mut sent = 0;
    for (option, bytes, expect) in &options {
        for ((l4, probe), expect) in syn_and_udp(src, dst).into_iter().zip(expect) {
            let with = |tcp, udp| Probe {
                ip_options: bytes.clone(),
                ..probe(tcp, udp)
            };
            differ += compare(&prober, &format!("{l4} with {option}"), &with, &[], expect);
            sent += 1;
        }
    }
    assert_eq!(differ, 0, "{differ} answers differ from the kernel's");
    guarded.assert_nothing_reached_a_listener(sent);
}

/// An IPv6 option (RFC 4727's experimental types) in a hop-by-hop or a
/// destination options header, of each action the type's two high bits
/// ask for: skip it (the kernel answers as without it), discard (silence),
/// discard with a parameter problem, and the same unless the destination
/// is multicast (it is not). On a SYN and a UDP datagram, the knock and
/// protected ports answer as a closed port.
#[test]
fn ipv6_options_of_every_action_get_the_kernels_answers_at_concealed_ports() {
    let guarded = Guarded::start(|lab| unlimited_icmp(&lab.server));
    let prober = Prober::new(&guarded.lab);
    let (src, dst) = v6();
    let actions = [
        ("skip", 0x1e, ["RST", "ICMP 1/4"]),
        ("discard", 0x5e, ["silence", "silence"]),
        ("discard, parameter problem", 0x9e, ["ICMP 4/2", "ICMP 4/2"]),
        (
            "discard, parameter problem unless multicast",
            0xde,
            ["ICMP 4/2", "ICMP 4/2"],
        ),
    ];
    let mut differ = 0;
    let mut sent = 0;
    for (header, kind) in [
        ("hop-by-hop", Ext::HOP_BY_HOP),
        ("destination options", Ext::DESTINATION),
    ] {
        for (action, option, expect) in actions {
            for ((l4, probe), expect) in syn_and_udp(src, dst).into_iter().zip(expect) {
                let with = |tcp, udp| Probe {
                    ipv6_ext: vec![Ext::options(kind, &[option, 2, 0xab, 0xcd])],
                    ..probe(tcp, udp)
                };
                let name = format!("{l4} with a {header} option to {action}");
                differ += compare(&prober, &name, &with, &[], expect);
                sent += 1;
            }
        }
    }
    assert_eq!(differ, 0, "{differ} answers differ from the kernel's");
    guarded.assert_nothing_reached_a_listener(sent);
}

/// A SYN (with 20 bytes of data) and a UDP datagram cut into three
/// fragments, in IPv4 and IPv6; the first holds the whole TCP or UDP header
/// (xknock drops a first fragment without it at every port, closed ones
/// too). Whole, in order or not, the kernel
/// reassembles and answers; with a piece missing it sends "fragment
/// reassembly time exceeded" once its timeout runs out if the first piece
/// came, and nothing if it did not (timeouts shortened to 2 s in the
/// server's namespace). The knock and protected ports answer each so.
#[test]
fn fragmented_probes_get_the_kernels_answers_at_concealed_ports() {
    let guarded = Guarded::start(|lab| {
        unlimited_icmp(&lab.server);
        sysctl(&lab.server, "net.ipv4.ipfrag_time", "2");
        sysctl(&lab.server, "net.ipv6.ip6frag_time", "2");
    });
    let prober = Prober::new(&guarded.lab);
    let mut differ = 0;
    let mut sent = 0;
    for ((src, dst), family) in [(v4(), "IPv4"), (v6(), "IPv6")] {
        let unreachable = if src.is_ipv4() {
            "ICMP 3/3"
        } else {
            "ICMP 1/4"
        };
        let expired = if src.is_ipv4() {
            "ICMP 11/1"
        } else {
            "ICMP 3/1"
        };
        let kinds: [(&str, BuildFrom, &str); 2] = [
            (
                "SYN",
                Box::new(move |tcp, _, sport| Probe {
                    src_port: sport,
                    payload: vec![0x5a; 20],
                    ..Probe::tcp(src, dst, tcp, SYN).fragmented(&[24, 32])
                }),
                "RST",
            ),
            (
                "UDP datagram",
                Box::new(move |_, udp, sport| Probe {
                    src_port: sport,
                    ..Probe::udp(src, dst, udp, 40).fragmented(&[16, 32])
                }),
                unreachable,
            ),
        ];
        for (l4, probe, answer) in &kinds {
            for (order, pick) in [
                ("in order", [0, 1, 2]),
                ("reversed", [2, 1, 0]),
                ("middle first", [1, 0, 2]),
            ] {
                let name = format!("{family} {l4} in three fragments, {order}");
                differ += compare(&prober, &name, &|t, u| probe(t, u, 40123), &pick, answer);
                sent += 1;
            }
        }
        // With a piece missing the kernel answers after its timeout: one
        // batch for all ports, each probe from a source port of its own.
        let missing = [
            ("the first", vec![1, 2], "silence"),
            ("the middle", vec![0, 2], expired),
            ("the last", vec![0, 1], expired),
        ];
        let mut probes = Vec::new();
        for (l4, probe, _) in &kinds {
            for (piece, pick, expect) in &missing {
                let ports = [(CLOSED_TCP, CLOSED_UDP), (CONCEALED[0].1, CONCEALED[0].2)];
                let ports = ports.into_iter().chain([(CONCEALED[1].1, CONCEALED[1].2)]);
                for (tcp, udp) in ports {
                    let probe = probe(tcp, udp, 41000 + probes.len() as u16);
                    let name = format!("{family} {l4} in three fragments without {piece}");
                    probes.push((name, probe, pick.clone(), *expect));
                }
            }
        }
        let batch: Vec<_> = probes
            .iter()
            .map(|(_, probe, pick, _)| {
                let frames = probe.frames(prober.server_mac, prober.client_mac);
                (pick.iter().map(|&i| frames[i].clone()).collect(), probe)
            })
            .collect();
        let answers = prober.batch(&batch, Duration::from_millis(3500));
        for (answers, (name, _, _, expect)) in answers.chunks(3).zip(probes.iter().step_by(3)) {
            assert_eq!(
                kind(&answers[0]),
                *expect,
                "{name} at a closed port: the kernel answered\n{}",
                show(&answers[0])
            );
            for (concealed, (role, _, _)) in answers[1..].iter().zip(CONCEALED) {
                differ += usize::from(differs(name, role, concealed, &answers[0]));
            }
            println!("{name}: closed port {expect}");
            // Without the first piece, nothing at the closed port has ports.
            sent += usize::from(*expect != "silence");
        }
    }
    assert_eq!(differ, 0, "{differ} answers differ from the kernel's");
    guarded.assert_nothing_reached_a_listener(sent);
}

/// The IPv4 ID of a port unreachable comes from the kernel's counter for
/// the peer, which its echo replies draw from too: ping, a UDP datagram at
/// the port, ping, and the unreachable's ID lies between the two replies',
/// at a closed port and at the concealed ones alike, round after round.
#[test]
fn port_unreachable_ids_come_from_the_counter_of_echo_replies() {
    let guarded = Guarded::start(|lab| unlimited_icmp(&lab.server));
    let prober = Prober::new(&guarded.lab);
    let (src, dst) = v4();
    const ROUNDS: usize = 20;
    let ports = [
        ("closed", CLOSED_UDP),
        ("knock", KNOCK_UDP),
        ("protected", PROTECTED_UDP),
    ];
    let mut between = [0; 3];
    for _ in 0..ROUNDS {
        for (i, (_, port)) in ports.iter().enumerate() {
            let before = prober.ping(src, dst).expect("an echo reply");
            let probe = Probe::udp(src, dst, *port, 12);
            let answers = prober.wire.exchange(
                &probe,
                prober.server_mac,
                prober.client_mac,
                Duration::from_millis(100),
            );
            let after = prober.ping(src, dst).expect("an echo reply");
            if let [answer] = answers.as_slice() {
                let id = u16::from_be_bytes([answer[18], answer[19]]);
                let (since, until) = (id.wrapping_sub(before), after.wrapping_sub(id));
                between[i] += usize::from(since > 0 && until > 0 && since < 1000 && until < 1000);
            }
        }
    }
    let counts: Vec<String> = ports
        .iter()
        .zip(between)
        .map(|((role, _), n)| format!("{role} {n}/{ROUNDS}"))
        .collect();
    println!(
        "conceal: unreachable IDs between two echo replies': {}",
        counts.join(", ")
    );
    assert_eq!(between[0], ROUNDS, "the kernel's own: {counts:?}");
    assert_eq!(between, [ROUNDS; 3], "{counts:?}");
    guarded.assert_nothing_reached_a_listener(ROUNDS);
}

/// IPv6 flow labels. An ICMPv6 error's is the kernel's own, a hash of its
/// type and code, the same for every port: what the knock and protected
/// ports answer carries, to the bit, the label the kernel gave the very
/// same probe while nothing listened there. An RST's is a keyed hash of its
/// flow: the host makes it for the steered flow (port 0), so the egress
/// program puts in its place a keyed hash of the flow the prober sent, as
/// the kernel's own are to a prober without the key: the same flow gets
/// the same label, each port one of its own, and none is the label the
/// host gives a probe of port 0 from the steered source port (were it,
/// sweeping port 0's source ports after a scan would name the concealed
/// ports).
#[test]
fn ipv6_flow_labels_are_the_kernels_or_a_keyed_hash_of_the_probed_flow() {
    let (src, dst) = v6();
    let ports = [("closed", CLOSED_TCP, CLOSED_UDP)]
        .into_iter()
        .chain(CONCEALED)
        .collect::<Vec<_>>();
    let probes = move || -> Vec<(String, Probe)> {
        ports
            .iter()
            .flat_map(|&(role, tcp, udp)| {
                [
                    (
                        format!("SYN at the {role} port"),
                        Probe::tcp(src, dst, tcp, SYN),
                    ),
                    (
                        format!("UDP at the {role} port"),
                        Probe::udp(src, dst, udp, 12),
                    ),
                ]
            })
            .collect()
    };
    let label_of = |prober: &Prober, probe: &Probe, name: &str| -> u32 {
        let answers = prober
            .wire
            .exchange(probe, prober.server_mac, prober.client_mac, WAIT);
        assert_eq!(answers.len(), 1, "{name}");
        let ip = &answers[0][14..];
        u32::from_be_bytes([0, ip[1] & 0x0f, ip[2], ip[3]])
    };
    let labels = |lab: &lab::Lab| -> Vec<(String, u32)> {
        let prober = Prober::new(lab);
        probes()
            .into_iter()
            .map(|(name, probe)| {
                let label = label_of(&prober, &probe, &name);
                (name, label)
            })
            .collect()
    };
    let mut before = Vec::new();
    let guarded = Guarded::start(|lab| {
        unlimited_icmp(&lab.server);
        before = labels(lab);
    });
    let after = labels(&guarded.lab);
    let again = labels(&guarded.lab);
    for ((name, label), (_, kernel)) in after.iter().zip(&before) {
        println!("conceal: {name}: flow label {label:05x}, the kernel's while closed {kernel:05x}");
    }
    // What makes the comparison mean something: the kernel's RST labels
    // differ by port, its unreachables' do not.
    let rst = |labels: &[(String, u32)]| -> Vec<u32> {
        labels.iter().step_by(2).map(|(_, l)| *l).collect()
    };
    let icmp = |labels: &[(String, u32)]| -> Vec<u32> {
        labels.iter().skip(1).step_by(2).map(|(_, l)| *l).collect()
    };
    let (kernel_rst, kernel_icmp) = (rst(&before), icmp(&before));
    assert!(
        kernel_rst[0] != kernel_rst[1]
            && kernel_rst[1] != kernel_rst[2]
            && kernel_rst[0] != kernel_rst[2],
        "{before:x?}"
    );
    assert!(
        kernel_icmp.iter().all(|l| *l == kernel_icmp[0] && *l != 0),
        "{before:x?}"
    );
    // ICMPv6 errors: the kernel's, to the bit.
    assert_eq!(
        icmp(&after),
        kernel_icmp,
        "unreachables' labels once guarded"
    );
    // RSTs: the closed port's untouched; the concealed ports' a label per
    // flow, the same when asked again.
    let guarded_rst = rst(&after);
    assert_eq!(guarded_rst[0], kernel_rst[0], "the closed port's RST label");
    assert_eq!(guarded_rst, rst(&again), "the same flows, the same labels");
    for (i, label) in guarded_rst.iter().enumerate().skip(1) {
        assert!(*label != 0 && *label <= 0xf_ffff, "{after:x?}");
        assert!(
            guarded_rst
                .iter()
                .enumerate()
                .all(|(j, other)| j == i || other != label),
            "a label of its own per port: {after:x?}"
        );
    }
    // No probe of port 0 from the steered source port gives them away.
    let seed = source_seed(&guarded.xknock);
    let prober = Prober::new(&guarded.lab);
    for (&(role, tcp, _), label) in CONCEALED.iter().zip(&guarded_rst[1..]) {
        let zero = port_zero_from_steered(seed, &Probe::tcp(src, dst, tcp, SYN));
        let port_zero = label_of(&prober, &zero, "SYN at port 0");
        assert_ne!(
            port_zero, *label,
            "the {role} port's RST label is port 0's from the steered source port"
        );
    }
    guarded.assert_nothing_reached_a_listener(2);
}

/// `nmap -sS --ip-options "L <server>"`: the kernel drops a source-routed
/// packet, so every port of the range looks alike (filtered), and the knock
/// and protected ports among them look as their closed neighbours do. Then
/// the same with UDP (-sU).
#[test]
fn a_source_routed_scan_shows_concealed_ports_as_it_shows_closed_ones() {
    lab::require_program("nmap", "nmap");
    let guarded = Guarded::start(|_| {});
    let scan = |kind: &str, ports: &str| -> Vec<(u16, String)> {
        let output = guarded
            .lab
            .client
            .command("nmap")
            .args([
                kind,
                "-n",
                "-Pn",
                "-T4",
                "--max-retries",
                "1",
                "--min-rate",
                "3000",
            ])
            .args(["--ip-options", &format!("L {SERVER_V4}"), "-p", ports])
            .args(["-oG", "-", SERVER_V4])
            .output()
            .expect("run nmap");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "nmap: {text}");
        println!("{text}");
        states(&text, ports)
    };
    // TCP first and UDP after: no TCP step follows the UDP one, so the scan
    // never completes the knock (tcp:3721 udp:4728 tcp:6742).
    let tcp = scan("-sS", "1-7000");
    let udp = scan("-sU", "4700-4760,5540-5570,51800-51840");
    for (ports, closed, concealed) in [
        (&tcp, CLOSED_TCP, [22, 3721, 6742]),
        (&udp, CLOSED_UDP, [4728, 51820, 51820]),
    ] {
        let state = |port: u16| &ports.iter().find(|(p, _)| *p == port).expect("scanned").1;
        assert!(
            state(closed).contains("filtered"),
            "the kernel drops source-routed packets: nmap saw port {closed} {}",
            state(closed)
        );
        for port in concealed {
            assert_eq!(
                state(port),
                state(closed),
                "port {port} against closed {closed}"
            );
        }
        let unlike: Vec<_> = ports.iter().filter(|(_, s)| s != state(closed)).collect();
        assert!(
            unlike.is_empty(),
            "ports unlike closed port {closed}: {unlike:?}"
        );
    }
    guarded.assert_nothing_reached_a_listener(2);
}

/// The state nmap's grepable output gives each port of `ranges`: the ports
/// it lists, and the ignored state for the rest.
fn states(grepable: &str, ranges: &str) -> Vec<(u16, String)> {
    let line = grepable
        .lines()
        .find(|l| l.contains("Ports:") || l.contains("Ignored State:"))
        .unwrap_or_else(|| panic!("no ports in {grepable}"));
    let ignored = line
        .split("Ignored State: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("none");
    let listed: Vec<(u16, String)> = line
        .split("Ports: ")
        .nth(1)
        .map(|ports| ports.split('\t').next().unwrap_or(""))
        .unwrap_or("")
        .split(", ")
        .filter_map(|entry| {
            let mut parts = entry.trim().split('/');
            Some((parts.next()?.parse().ok()?, parts.next()?.to_owned()))
        })
        .collect();
    ranges
        .split(',')
        .flat_map(|range| {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            low.parse::<u16>().unwrap()..=high.parse::<u16>().unwrap()
        })
        .map(|port| {
            let state = listed
                .iter()
                .find(|(p, _)| *p == port)
                .map_or_else(|| ignored.to_owned(), |(_, s)| s.clone());
            (port, state)
        })
        .collect()
}

/// Two flows of one peer whose steered source ports collide share one
/// slot: the answer to the first that comes after the second took the slot
/// must leave neither with the second's ports nor from port 0. A SYN to the
/// knock port in fragments, the last one missing, is answered only when
/// reassembly times out (2 s); meanwhile a SYN of the same peer to the
/// protected port, from a source port picked to collide (the test knows
/// the key), takes the slot. The late answer is dropped, as if lost.
#[test]
fn a_late_answer_whose_slot_another_flow_took_is_dropped_not_misaddressed() {
    let guarded = Guarded::start(|lab| {
        unlimited_icmp(&lab.server);
        sysctl(&lab.server, "net.ipv4.ipfrag_time", "2");
    });
    let seed = source_seed(&guarded.xknock);
    let prober = Prober::new(&guarded.lab);
    let (src, dst) = v4();
    let IpAddr::V4(client) = src else {
        unreachable!("an IPv4 probe")
    };
    let peer = knock_common::addr_words(&knock_common::ipv4_mapped(client.octets()));
    let steered = |sport: u16, dport: u16| {
        knock_common::steered_port(
            seed,
            &peer,
            sport.to_be_bytes(),
            dport.to_be_bytes(),
            knock_common::IPPROTO_TCP,
        )
    };
    let (knock, protected) = (CONCEALED[0].1, CONCEALED[1].1);
    let mut by_steered = std::collections::HashMap::new();
    for sport in 1024..=u16::MAX {
        by_steered.entry(steered(sport, protected)).or_insert(sport);
    }
    let (first_sport, second_sport) = (40000..=u16::MAX)
        .find_map(|s| by_steered.get(&steered(s, knock)).map(|&b| (s, b)))
        .expect("two source ports whose flows collide");
    let first = Probe {
        src_port: first_sport,
        payload: vec![0x5a; 20],
        ..Probe::tcp(src, dst, knock, SYN).fragmented(&[24, 32])
    };
    let second = Probe {
        src_port: second_sport,
        seq: 0x0bad_cafe,
        ..Probe::tcp(src, dst, protected, SYN)
    };
    let frames = first.frames(prober.server_mac, prober.client_mac);
    let pending = prober.batch(
        &[(frames[..2].to_vec(), &first)],
        Duration::from_millis(300),
    );
    assert!(
        pending[0].is_empty(),
        "answered before reassembly timed out"
    );
    let answers = prober.answers(&second, WAIT);
    assert_eq!(
        answers.len(),
        1,
        "the second SYN is answered\n{}",
        show(&answers)
    );
    assert!(
        answers[0].contains(&("tcp.src_port".into(), "PORT".into())),
        "from the protected port\n{}",
        show(&answers)
    );
    let late = prober.batch(&[(Vec::new(), &first)], Duration::from_millis(3500));
    assert!(
        late[0].is_empty(),
        "the first flow's late answer left with another flow's ports or from port 0\n{}",
        show(&late[0])
    );
    guarded.assert_nothing_reached_a_listener(0);
}
