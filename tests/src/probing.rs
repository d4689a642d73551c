//! What the concealment probes share: the server with xknock guarding its
//! ports and listeners behind them that count what reaches them, a tap on
//! the server's interface that sees every packet xknock lets into the
//! stack, the server's sysctls, and a prober on the client's veth.

use std::{
    net::{IpAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{
    Lab, Netns, Xknock, article_config, run,
    wire::{Probe, TCP, UDP, Wire, fields, mac_of},
};

pub const CLOSED_TCP: u16 = 5555;
pub const CLOSED_UDP: u16 = 5556;
/// A second closed port of each protocol, to tell apart what two closed
/// ports differ by.
pub const CLOSED_TCP_B: u16 = 5557;
pub const CLOSED_UDP_B: u16 = 5558;
/// Steps of the article's sequence (tcp:3721 udp:4728 tcp:6742); probes
/// never touch 6742, so they never complete the knock.
pub const KNOCK_TCP: u16 = 3721;
pub const KNOCK_UDP: u16 = 4728;
pub const KNOCK_TCP_LAST: u16 = 6742;
pub const PROTECTED_TCP: u16 = 22;
pub const PROTECTED_UDP: u16 = 51820;
/// The concealed ports a probe goes to: (role, TCP port, UDP port).
pub const CONCEALED: [(&str, u16, u16); 2] = [
    ("knock", KNOCK_TCP, KNOCK_UDP),
    ("protected", PROTECTED_TCP, PROTECTED_UDP),
];

pub type Fields = Vec<(String, String)>;

/// Sets `key` (a sysctl under net.) in `ns`: per namespace, so the lab's
/// server alone changes.
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("--net=/var/run/netns/{}", ns.name);
    run(
        "nsenter",
        &[&path, "--", "sysctl", "-qw", &format!("{key}={value}")],
    );
}

/// Lifts the kernel's per-peer ICMP limits (v4 and v6) in `ns`, for tests
/// that provoke more ICMP errors than the default bucket of 6 holds: the
/// closed ports and the concealed ones see the same host either way.
pub fn unlimited_icmp(ns: &Netns) {
    sysctl(ns, "net.ipv4.icmp_ratelimit", "0");
    sysctl(ns, "net.ipv6.icmp.ratelimit", "0");
}

/// Services that count what reaches them: a TCP listener (accepted
/// connections) or a UDP socket (datagrams) on each knock and protected
/// port.
pub struct Listeners {
    reached: Arc<AtomicUsize>,
}

impl Listeners {
    fn start(lab: &Lab) -> Listeners {
        let reached = Arc::new(AtomicUsize::new(0));
        for port in [PROTECTED_TCP, KNOCK_TCP, KNOCK_TCP_LAST] {
            let listener = lab
                .server
                .within(move || TcpListener::bind(("::", port)).expect("bind listener"));
            let reached = Arc::clone(&reached);
            thread::spawn(move || {
                for _ in listener.incoming() {
                    reached.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for port in [PROTECTED_UDP, KNOCK_UDP] {
            let socket = lab
                .server
                .within(move || UdpSocket::bind(("::", port)).expect("bind udp"));
            let reached = Arc::clone(&reached);
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while socket.recv_from(&mut buf).is_ok() {
                    reached.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Listeners { reached }
    }
}

/// A tap on the server's interface: it sees packets after XDP, as the stack
/// gets them. It counts the TCP/UDP packets from the client at a knock or
/// protected port (at its own port, so a listener could get it), and the
/// SYN+ACKs and datagrams the server sends from those ports (a listener
/// answering); and the client's packets at the closed ports, to show it
/// saw the traffic at all.
pub struct Sentinel {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<String>, usize)>>,
}

impl Sentinel {
    fn start(lab: &Lab) -> Sentinel {
        let wire = Wire::open(&lab.server, &lab.server_if);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let guarded = [
                (TCP, KNOCK_TCP),
                (UDP, KNOCK_UDP),
                (TCP, KNOCK_TCP_LAST),
                (TCP, PROTECTED_TCP),
                (UDP, PROTECTED_UDP),
            ];
            let closed = [CLOSED_TCP, CLOSED_UDP, CLOSED_TCP_B, CLOSED_UDP_B];
            let (mut breaches, mut seen) = (Vec::new(), 0);
            while !stopped.load(Ordering::SeqCst) {
                let Some(got) = wire.read(Duration::from_millis(50)) else {
                    continue;
                };
                let Some((proto, src, dst, flags)) = ports(&got.frame) else {
                    continue;
                };
                if !got.outgoing && closed.contains(&dst) {
                    seen += 1;
                }
                let listener_answer = proto == UDP || flags & 0x12 == 0x12;
                if (!got.outgoing && guarded.contains(&(proto, dst)))
                    || (got.outgoing && guarded.contains(&(proto, src)) && listener_answer)
                {
                    let way = if got.outgoing { "out from" } else { "in to" };
                    let port = if got.outgoing { src } else { dst };
                    breaches.push(format!("protocol {proto} {way} port {port}"));
                }
            }
            (breaches, seen)
        });
        Sentinel {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the tap: the packets that got past xknock to a guarded port,
    /// and how many it saw at the closed ports.
    fn finish(&mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|thread| thread.join().expect("sentinel"))
            .unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// (Protocol, source port, destination port, TCP flags) of a TCP or UDP
/// packet in an Ethernet frame; None for anything else, and for a fragment
/// that is not the first.
fn ports(frame: &[u8]) -> Option<(u8, u16, u16, u8)> {
    let ip = frame.get(14..)?;
    let (proto, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let first = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff == 0;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            (ip[9], ip.get(header_len..).filter(|_| first)?)
        }
        0x86dd => {
            let (mut next, mut at) = (*ip.get(6)?, 40);
            loop {
                match next {
                    0 | 43 | 60 => {
                        next = *ip.get(at)?;
                        at += (usize::from(*ip.get(at + 1)?) + 1) * 8;
                    }
                    44 => {
                        let offset = u16::from_be_bytes([*ip.get(at + 2)?, *ip.get(at + 3)?]);
                        if offset & 0xfff8 != 0 {
                            return None;
                        }
                        next = *ip.get(at)?;
                        at += 8;
                    }
                    _ => break,
                }
            }
            (next, ip.get(at..)?)
        }
        _ => return None,
    };
    if proto != TCP && proto != UDP {
        return None;
    }
    let be = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    (l4.len() >= 14 || (proto == UDP && l4.len() >= 4))
        .then(|| (proto, be(0), be(2), if proto == TCP { l4[13] } else { 0 }))
}

/// The server with xknock guarding 22 and 51820 (`conceal = "closed"`),
/// counting listeners on every knock and protected port, and the tap.
pub struct Guarded {
    pub lab: Lab,
    pub xknock: Xknock,
    listeners: Listeners,
    sentinel: Sentinel,
}

impl Guarded {
    /// The lab with the server's sysctls set by `setup` first (xknock reads
    /// some of them when it starts).
    pub fn start(setup: impl FnOnce(&Lab)) -> Guarded {
        let lab = Lab::new();
        setup(&lab);
        let listeners = Listeners::start(&lab);
        let config = format!(
            "conceal = \"closed\"\n{}",
            article_config("30s", "\"tcp:22\", \"udp:51820\"")
        );
        let xknock = Xknock::start(&lab, &config, &[], false);
        let sentinel = Sentinel::start(&lab);
        Guarded {
            lab,
            xknock,
            listeners,
            sentinel,
        }
    }

    /// Fails the test if any packet xknock stopped reached the stack at its
    /// own port, or a listener, or a listener answered; and shows that the
    /// tap saw the probes at the closed ports (at least `closed` packets
    /// that carry ports).
    pub fn assert_nothing_reached_a_listener(mut self, closed: usize) {
        // What is in flight lands first.
        thread::sleep(Duration::from_millis(200));
        let (breaches, seen) = self.sentinel.finish();
        let reached = self.listeners.reached.load(Ordering::SeqCst);
        println!(
            "conceal: the tap saw {seen} packets at closed ports, {} at guarded ones; listeners got {reached}",
            breaches.len()
        );
        assert!(
            breaches.is_empty(),
            "stopped packets got past xknock: {breaches:?}"
        );
        assert_eq!(reached, 0, "connections or datagrams reached a listener");
        assert!(
            seen >= closed,
            "the tap saw {seen} packets at closed ports, fewer than the {closed} sent"
        );
    }
}

/// Raw frames from the client's veth, read back as fields.
pub struct Prober {
    pub wire: Wire,
    pub server_mac: [u8; 6],
    pub client_mac: [u8; 6],
}

impl Prober {
    pub fn new(lab: &Lab) -> Prober {
        Prober {
            wire: Wire::open(&lab.client, &lab.client_if),
            server_mac: mac_of(&lab.server, &lab.server_if),
            client_mac: mac_of(&lab.client, &lab.client_if),
        }
    }

    /// The answers to `probe` within `wait`, as fields.
    pub fn answers(&self, probe: &Probe, wait: Duration) -> Vec<Fields> {
        self.batch(
            &[(probe.frames(self.server_mac, self.client_mac), probe)],
            wait,
        )
        .pop()
        .expect("one probe")
    }

    /// Each probe's answers within `wait`, as fields, after sending each
    /// probe's frames (see `Wire::exchange_batch`).
    pub fn batch(&self, batch: &[(Vec<Vec<u8>>, &Probe)], wait: Duration) -> Vec<Vec<Fields>> {
        let answers = self
            .wire
            .exchange_batch(batch, self.server_mac, self.client_mac, wait);
        answers
            .iter()
            .zip(batch)
            .map(|(frames, (_, probe))| frames.iter().map(|f| fields(f, probe)).collect())
            .collect()
    }

    /// The ID of the echo reply to a ping from `src` to `dst`.
    pub fn ping(&self, src: IpAddr, dst: IpAddr) -> Option<u16> {
        self.wire.ping(
            src,
            dst,
            self.server_mac,
            self.client_mac,
            Duration::from_millis(300),
        )
    }
}

/// The key of the running filter's hashes (its pinned instance record).
pub fn source_seed(xknock: &Xknock) -> u32 {
    let pins = xknock::loader::pins::PinDir::new(&xknock.filter().pin_dir);
    xknock::loader::read_instance(&pins)
        .expect("the instance record")
        .expect("a pinned filter")
        .source_seed
}

/// A SYN to port 0 from the source port xknock steers `probe`'s flow (a
/// TCP probe) with, under `seed`: what a prober sweeping port 0's source
/// ports after a scan sends.
pub fn port_zero_from_steered(seed: u32, probe: &Probe) -> Probe {
    let peer = match probe.src {
        IpAddr::V4(v4) => knock_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    let steered = knock_common::steered_port(
        seed,
        &knock_common::addr_words(&peer),
        probe.src_port.to_be_bytes(),
        probe.dst_port.to_be_bytes(),
        TCP,
    );
    Probe {
        src_port: u16::from_be_bytes(steered),
        ..Probe::tcp(probe.src, probe.dst, 0, crate::wire::SYN)
    }
}

/// Answers as text, for failure messages.
pub fn show(answers: &[Fields]) -> String {
    if answers.is_empty() {
        return "  (nothing)".into();
    }
    answers
        .iter()
        .map(|fields| {
            fields
                .iter()
                .map(|(name, value)| format!("  {name} = {value}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n  --\n")
}
