//! The soak: the filter in the lab for `XKNOCK_SOAK_MINUTES` (3 unless
//! set; `cargo xtask soak --minutes N`) under everything at once:
//!
//! - legitimate clients, each from an address of its own, knocking and
//!   then holding an SSH-like flow (lines echoed for a second or two):
//!   knockd's `knock` (IPv4 and IPv6), `ping` sizes (ICMP steps), `xknock
//!   knock` on a one-time and a rotating rule, the real fwknop client, and
//!   `xknock grant` followed by `xknock revoke` (after which the address
//!   must be refused);
//! - probers that never hold a grant: connections to the protected ports,
//!   wrong sequences, SPA with the wrong keys;
//! - spoofed floods from random IPv4 sources at a first knock port, a
//!   protected port and the SPA port, and malformed frames (VLAN stacks,
//!   IPv4 options, IPv6 extension chains, fragments, truncation);
//! - SIGHUP every 4-8 s, one in three with an invalid file; the
//!   rotating rule's rotations; `kill -9` of the loader at random moments
//!   and a new `xknock run`.
//!
//! It asserts, from a tap on the server's side of the veth (what XDP let
//! through) and the kernel's counters: no packet from a source without a
//! grant ever reached a protected port; every knock opened (those that
//! need the loader, unless it was down meanwhile); every grant the kernel
//! made while a loader ran was reported as an event; the loader's RSS and
//! the grants and flows stayed bounded. The figures go to stdout and to
//! target/soak/report.md.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the soak reports what it did on the test's output"
)]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use lab::{
    Lab, Netns, Reach, TestFilter, Xknock,
    flood::with_generator,
    frames::{Fragment, Frame, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    fwknop::{FwknopKeys, client_send},
    knock_with_state, run,
    wire::{Wire, mac_of},
    xknock_bin, xknock_in,
};
use serde_json::Value;
use xknock::config::{Config, rotating::Rotating};

const SERVER: &str = "198.18.0.1";
const SERVER6: &str = "fd18::1";
/// Probers: addresses that never hold a grant.
const PROBERS: [&str; 3] = ["198.18.0.100", "198.18.0.101", "fd18::100"];
const ROTATE_SECS: u64 = 20;
const ONE_TIME_LINES: usize = 3000;
/// Frames per burst of the spoofed flood, one burst every `FLOOD_PAUSE`.
const FLOOD_BURST: u32 = 1000;
const FLOOD_PAUSE: Duration = Duration::from_millis(10);

/// The kinds of legitimate client, each from its own address, knocking at
/// an address of the server's own (a route in the client's namespace
/// picks the source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Knockd,
    Knockd6,
    Ping,
    OneTime,
    Rotating,
    Spa,
    Grant,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Knockd,
        Kind::Knockd6,
        Kind::Ping,
        Kind::OneTime,
        Kind::Rotating,
        Kind::Spa,
        Kind::Grant,
    ];

    /// (the client's source, the server's address it knocks and connects to)
    fn addresses(self) -> (&'static str, &'static str) {
        match self {
            Kind::Knockd => ("198.18.0.21", "198.18.0.11"),
            Kind::Knockd6 => ("fd18::21", "fd18::11"),
            Kind::Ping => ("198.18.0.22", "198.18.0.12"),
            Kind::OneTime => ("198.18.0.23", "198.18.0.13"),
            Kind::Rotating => ("198.18.0.24", "198.18.0.14"),
            Kind::Spa => ("198.18.0.25", "198.18.0.15"),
            Kind::Grant => ("198.18.0.26", "198.18.0.16"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Knockd => "knockd's knock",
            Kind::Knockd6 => "knockd's knock, IPv6",
            Kind::Ping => "ping sizes",
            Kind::OneTime => "xknock knock, one-time",
            Kind::Rotating => "xknock knock, rotating",
            Kind::Spa => "fwknop",
            Kind::Grant => "xknock grant, then revoke",
        }
    }

    fn port(self) -> u16 {
        match self {
            Kind::OneTime | Kind::Rotating => 2222,
            _ => 22,
        }
    }

    /// Whether opening needs the loader at that moment (it installs the
    /// sequence or judges the packet); the others are the kernel's alone.
    fn needs_loader(self) -> bool {
        matches!(self, Kind::OneTime | Kind::Rotating | Kind::Spa)
    }

    /// Seconds between two attempts.
    fn pause(self) -> Duration {
        match self {
            Kind::Rotating => Duration::from_secs(1),
            // Each one-time sequence used is a new program load.
            Kind::OneTime => Duration::from_secs(9),
            Kind::Grant => Duration::from_secs(4),
            _ => Duration::from_secs(3),
        }
    }
}

/// One attempt of a legitimate client.
#[derive(Debug)]
struct Attempt {
    kind: Kind,
    started: f64,
    ended: f64,
    /// None: it opened and its flow echoed; else what went wrong.
    failure: Option<String>,
}

/// What every thread shares.
struct Soak {
    start: Instant,
    stop: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
    /// Times the loader was down: from just before a kill to a little
    /// after the new run attached (f64::MAX while it restarts).
    down: Mutex<Vec<(f64, f64)>>,
    /// A revoked address that got a connection anyway, and prober
    /// connections that opened.
    client_breaches: Mutex<Vec<String>>,
    flood_frames: AtomicU64,
    malformed_frames: AtomicU64,
    prober_attempts: AtomicU64,
}

impl Soak {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, in slices, unless the soak ends first.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while self.running() && Instant::now() < until {
            thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }

    fn overlaps_down(&self, from: f64, to: f64) -> bool {
        self.down
            .lock()
            .expect("lock")
            .iter()
            .any(|&(a, b)| from <= b && a <= to)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn minutes() -> f64 {
    std::env::var("XKNOCK_SOAK_MINUTES")
        .ok()
        .map(|m| m.parse().expect("XKNOCK_SOAK_MINUTES: a number of minutes"))
        .unwrap_or(3.0)
}

/// The filter's configuration; `variant` changes what a reload may change
/// (open_for, the event budget) without touching any rule's sequence.
fn config(dir: &Path, keys: &FwknopKeys, variant: u32) -> String {
    let open_for = ["20s", "25s"][variant as usize % 2];
    let budget = [20, 30][variant as usize % 2];
    format!(
        "flood_events_per_second = {budget}\n\
         spa_datagrams_per_second = 2000\n\
         [penalty]\nfailures = 5\nwindow = \"60s\"\nduration = \"60s\"\n\
         [[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7001\", \"udp:7002\", \"tcp:7003\"]\n\
         sequence_timeout = \"5s\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:22\"]\n\
         [[rule]]\nname = \"ping\"\nsequence = [\"icmp:101\", \"icmp:202\", \"icmp:303\"]\n\
         sequence_timeout = \"5s\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:22\"]\n\
         [[rule]]\nname = \"otp\"\nsequences_file = \"{otp}\"\nsequence_timeout = \"5s\"\n\
         open_for = \"{open_for}\"\nprotect = [\"tcp:2222\"]\n\
         [[rule]]\nname = \"rot\"\nsecret_file = \"{secret}\"\nrotate = \"{ROTATE_SECS}s\"\n\
         steps = 3\nsequence_timeout = \"5s\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:2222\"]\n\
         [[spa]]\nname = \"spa\"\nlisten = \"udp:62201\"\nkey_base64 = \"{key}\"\n\
         hmac_key_base64 = \"{hmac}\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:22\"]\n",
        otp = dir.join("server.otp").display(),
        secret = dir.join("rot.key").display(),
        key = keys.key_base64,
        hmac = keys.hmac_key_base64,
    )
}

/// The client's side of the one-time rule: its own copy of the lines.
fn client_config(dir: &Path) -> String {
    format!(
        "[[rule]]\nname = \"otp\"\nsequences_file = \"{otp}\"\nsequence_timeout = \"5s\"\n\
         open_for = \"20s\"\nprotect = [\"tcp:2222\"]\n",
        otp = dir.join("client.otp").display(),
    )
}

/// knockd's one-time format, ports no other rule uses.
fn one_time_lines() -> String {
    let mut text = String::new();
    for line in 0..ONE_TIME_LINES {
        let base = 20000 + (line * 7) % 9000;
        let _ = writeln!(text, "{},{}:udp,{}", base, base + 1, base + 2);
    }
    text
}

/// `addr` as a prefix of itself alone.
fn host(addr: &str) -> String {
    let len = if addr.contains(':') { 128 } else { 32 };
    format!("{addr}/{len}")
}

/// Adds `addr` to `iface` of `ns`.
fn add_address(ns: &Netns, iface: &str, addr: &str) {
    ns.ip(&["addr", "add", &host(addr), "dev", iface, "nodad"]);
}

/// Addresses, routes and the echo service: every kind's source on the
/// client, every kind's target on the server, a host route that makes the
/// one the source of the other.
fn set_up(lab: &Lab) {
    for kind in Kind::ALL {
        let (source, target) = kind.addresses();
        add_address(&lab.client, &lab.client_if, source);
        add_address(&lab.server, &lab.server_if, target);
        lab.client.ip(&[
            "route",
            "add",
            &host(target),
            "dev",
            &lab.client_if,
            "src",
            source,
        ]);
    }
    for prober in PROBERS {
        add_address(&lab.client, &lab.client_if, prober);
    }
    for port in [22, 2222] {
        let listener = lab
            .server
            .within(move || TcpListener::bind(("::", port)).expect("bind the echo service"));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || echo(stream));
            }
        });
    }
}

fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// An SSH-like session from `from` to `to`: connect (retrying for up to
/// `patience` while a grant may still be on its way), then lines echoed
/// for a while.
fn session(ns: &Netns, from: IpAddr, to: SocketAddr, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let stream = loop {
        let attempt = ns.within(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )
            .map_err(|e| e.to_string())?;
            socket
                .bind(&SocketAddr::new(from, 0).into())
                .map_err(|e| format!("bind {from}: {e}"))?;
            socket
                .connect_timeout(&to.into(), Duration::from_millis(700))
                .map_err(|e| format!("connect {to}: {e}"))?;
            Ok::<TcpStream, String>(socket.into())
        });
        match attempt {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    };
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    for line in 0..4 {
        let sent = format!("line {line} from {from}\n");
        stream
            .write_all(sent.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; sent.len()];
        stream
            .read_exact(&mut back)
            .map_err(|e| format!("echo: {e}"))?;
        if back != sent.as_bytes() {
            return Err("the echo differs".to_owned());
        }
        thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

fn ok(output: &Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

struct ClientSetup {
    dir: PathBuf,
    keys: FwknopKeys,
    /// The filter's configuration as the operator's tools and the rotating
    /// client read it: a valid copy (the filter's own file is invalid at
    /// times, between a bad edit and its repair).
    ops: PathBuf,
    rotating: Rotating,
    state: tempfile::TempDir,
}

/// One knock of `kind` and what it opened; for `Grant`, a grant, a
/// session, a revoke and a refused connection.
fn attempt(lab: &Lab, soak: &Soak, setup: &ClientSetup, kind: Kind) -> Result<(), String> {
    let (source, target) = kind.addresses();
    let (source, target) = (ip(source), ip(target));
    let to = SocketAddr::new(target, kind.port());
    let target_arg = target.to_string();
    let client_config = setup.dir.join("client.toml");
    let client_config = client_config.to_str().expect("utf-8");
    let ops = setup.ops.to_str().expect("utf-8");
    match kind {
        Kind::Knockd | Kind::Knockd6 => {
            let mut args = vec![];
            if kind == Kind::Knockd6 {
                args.push("-6");
            }
            args.extend([target_arg.as_str(), "7001", "7002:udp", "7003"]);
            let out = lab
                .client
                .command("knock")
                .args(&args)
                .output()
                .map_err(|e| e.to_string())?;
            ok(&out, "knock")?;
        }
        Kind::Ping => {
            for size in ["101", "202", "303"] {
                let out = lab
                    .client
                    .command("ping")
                    .args(["-c1", "-W1", "-I", &source.to_string(), "-s", size])
                    .arg(&target_arg)
                    .output()
                    .map_err(|e| e.to_string())?;
                ok(&out, "ping")?;
            }
        }
        Kind::OneTime => {
            // The client's copy of the lines as the server has marked them.
            fs::copy(setup.dir.join("server.otp"), setup.dir.join("client.otp"))
                .map_err(|e| e.to_string())?;
            let out = knock_with_state(
                lab,
                Some(setup.state.path()),
                &[&target_arg, "--config", client_config, "--rule", "otp"],
            );
            ok(&out, "xknock knock --rule otp")?;
        }
        Kind::Rotating => {
            let verdicts = |ops: &str| -> BTreeMap<String, u64> {
                status(lab, ops).unwrap_or_default()["verdicts"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            };
            let before = verdicts(ops);
            let out = knock_with_state(
                lab,
                Some(setup.state.path()),
                &[&target_arg, "--config", ops, "--rule", "rot"],
            );
            ok(&out, "xknock knock --rule rot")?;
            let after = verdicts(ops);
            let moved: Vec<String> = after
                .iter()
                .filter(|(k, v)| {
                    !k.contains("spa") && !k.contains("port_zero") && before.get(*k) != Some(v)
                })
                .map(|(k, v)| format!("{k}+{}", v - before.get(k).copied().unwrap_or(0)))
                .collect();
            let sent = format!(
                "{} ({moved:?})",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| l.contains("knocked"))
                    .collect::<String>()
            );
            let result = session(&lab.client, source, to, Duration::from_secs(6));
            return result.map_err(|e| {
                // What the kernel holds beside what the client sent.
                let installed: Vec<String> = status(lab, ops).unwrap_or_default()["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["name"] == "rot")
                    .map(|r| format!("{}: {}", r["index"], r["sequence"]))
                    .collect();
                format!("{e}; the client: {sent}; the kernel's: {installed:?}")
            });
        }
        Kind::Spa => {
            client_send(
                &lab.client,
                &setup.keys,
                &["-A", "tcp/22", "-s", "-D", &target_arg],
            );
        }
        Kind::Grant => {
            let out = xknock_in(
                &lab.server,
                &[
                    "grant",
                    &source.to_string(),
                    "--rule",
                    "ssh",
                    "--config",
                    ops,
                ],
            );
            ok(&out, "xknock grant")?;
        }
    }
    // The loader judges SPA and installs sequences between loads of the
    // filter (a second or more of the verifier's work each).
    let patience = if kind.needs_loader() {
        Duration::from_secs(6)
    } else {
        Duration::from_millis(500)
    };
    session(&lab.client, source, to, patience)?;
    if kind == Kind::Grant {
        let out = xknock_in(
            &lab.server,
            &["revoke", &source.to_string(), "--config", ops],
        );
        ok(&out, "xknock revoke")?;
        if lab
            .client
            .tcp_connect_from(source, to, Duration::from_millis(500))
            == Reach::Open
        {
            soak.client_breaches
                .lock()
                .expect("lock")
                .push(format!("{source} connected after its revoke"));
        }
    }
    Ok(())
}

/// A legitimate client's loop: attempts spaced by its pause (a rotating
/// client once per window, a few seconds into it).
fn client(lab: Arc<Lab>, soak: Arc<Soak>, setup: Arc<ClientSetup>, kind: Kind) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut last_window = None;
        while soak.running() {
            let mut into_window = None;
            if kind == Kind::Rotating {
                let now = SystemTime::now();
                let window = setup.rotating.window(now);
                let into = now
                    .duration_since(setup.rotating.window_start(window))
                    .unwrap_or_default();
                if last_window == Some(window)
                    || !(Duration::from_secs(3)..Duration::from_secs(10)).contains(&into)
                {
                    soak.sleep(kind.pause());
                    continue;
                }
                last_window = Some(window);
                into_window = Some((window, into));
            }
            let started = soak.now();
            let result = attempt(&lab, &soak, &setup, kind).map_err(|e| match into_window {
                Some((window, into)) => {
                    format!("window {window}, {:.1}s into it: {e}", into.as_secs_f64())
                }
                None => e,
            });
            soak.attempts.lock().expect("lock").push(Attempt {
                kind,
                started,
                ended: soak.now(),
                failure: result.err(),
            });
            soak.sleep(kind.pause());
        }
    })
}

/// Sources that never hold a grant: connections to the protected ports,
/// a sequence with a wrong step, SPA with the wrong keys asking for a
/// prober.
fn probers(lab: Arc<Lab>, soak: Arc<Soak>) -> JoinHandle<()> {
    thread::spawn(move || {
        let wrong_keys = FwknopKeys::generate();
        let mut round = 0u64;
        while soak.running() {
            round += 1;
            for prober in PROBERS {
                let from = ip(prober);
                let server = if prober.contains(':') {
                    SERVER6
                } else {
                    SERVER
                };
                if round.is_multiple_of(3) {
                    // The right first two steps, a wrong third.
                    let _ = lab.client.tcp_connect_from(
                        from,
                        SocketAddr::new(ip(server), 7001),
                        Duration::from_millis(100),
                    );
                    drop(lab.client.within(move || {
                        let socket = std::net::UdpSocket::bind((from, 0))?;
                        socket.send_to(b"k", (ip(server), 7002))?;
                        socket.send_to(b"k", (ip(server), 7003))
                    }));
                }
                if round.is_multiple_of(5) && !prober.contains(':') {
                    client_send(
                        &lab.client,
                        &wrong_keys,
                        &["-A", "tcp/22", "-a", prober, "-D", SERVER],
                    );
                }
                for port in [22, 2222] {
                    soak.prober_attempts.fetch_add(1, Ordering::Relaxed);
                    let reach = lab.client.tcp_connect_from(
                        from,
                        SocketAddr::new(ip(server), port),
                        Duration::from_millis(300),
                    );
                    if reach == Reach::Open {
                        soak.client_breaches
                            .lock()
                            .expect("lock")
                            .push(format!("prober {prober} connected to port {port}"));
                    }
                }
            }
            soak.sleep(Duration::from_millis(500));
        }
    })
}

/// Malformed and odd frames from the probers to the protected ports,
/// through a raw socket: VLAN stacks up to three deep, IPv4 options, IPv6
/// extension chains, fragments, truncation, garbage, and non-SYN flags.
fn malformed(lab: Arc<Lab>, soak: Arc<Soak>) -> JoinHandle<()> {
    thread::spawn(move || {
        let wire = Wire::open(&lab.client, &lab.client_if);
        let server_mac = mac_of(&lab.server, &lab.server_if);
        let client_mac = mac_of(&lab.client, &lab.client_if);
        let mut round = 0usize;
        while soak.running() {
            round += 1;
            for (i, prober) in PROBERS.iter().enumerate() {
                let from = ip(prober);
                let to = if prober.contains(':') {
                    ip(SERVER6)
                } else {
                    ip(SERVER)
                };
                let port = [22, 2222][(round + i) % 2];
                let flags = [TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST, 0][round % 5];
                let mut frame = Frame::tcp(from, to, port, flags);
                frame.checksums = true;
                match round % 6 {
                    0 => frame.vlan_tags = vec![0x8100],
                    1 => frame.vlan_tags = vec![0x88a8, 0x8100],
                    2 => frame.vlan_tags = vec![0x88a8, 0x8100, 0x8100],
                    3 if from.is_ipv4() => frame.ipv4_options = 40,
                    3 => frame.ipv6_ext = vec![0, 60, 43, 60],
                    4 => frame.fragment = Fragment::First,
                    _ => frame.payload = 100,
                }
                let (mut bytes, cuts) = frame.build();
                bytes[0..6].copy_from_slice(&server_mac);
                bytes[6..12].copy_from_slice(&client_mac);
                let mut sent = u64::from(wire.try_send(&bytes).is_ok());
                // The same cut short at a header boundary.
                let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 14).collect();
                if let Some(&cut) = cuts.get(round % cuts.len().max(1)) {
                    sent += u64::from(wire.try_send(&bytes[..cut.min(bytes.len())]).is_ok());
                }
                soak.malformed_frames.fetch_add(sent, Ordering::Relaxed);
            }
            // Garbage after a valid Ethernet header.
            let mut garbage = vec![0u8; 14 + round % 97];
            garbage[0..6].copy_from_slice(&server_mac);
            garbage[6..12].copy_from_slice(&client_mac);
            garbage[12..14].copy_from_slice(&[0x08, 0x00]);
            for (k, byte) in garbage.iter_mut().enumerate().skip(14) {
                *byte = (k * 31 + round) as u8;
            }
            let sent = wire.try_send(&garbage).is_ok();
            soak.malformed_frames
                .fetch_add(u64::from(sent), Ordering::Relaxed);
            soak.sleep(Duration::from_millis(20));
        }
    })
}

/// Spoofed floods from random IPv4 sources, taking turns: SYNs at the
/// first knock port, SYNs at a protected port, junk at the SPA port.
fn floods(lab: Arc<Lab>, soak: Arc<Soak>) -> JoinHandle<()> {
    let server_mac = mac_of(&lab.server, &lab.server_if);
    let client_mac = mac_of(&lab.client, &lab.client_if);
    let template = |frame: Frame| {
        let mut bytes = Frame {
            checksums: true,
            ..frame
        }
        .build()
        .0;
        bytes[0..6].copy_from_slice(&server_mac);
        bytes[6..12].copy_from_slice(&client_mac);
        bytes
    };
    let client = ip("198.18.0.2");
    let templates = [
        template(Frame::tcp(client, ip(SERVER), 7001, TCP_SYN)),
        template(Frame::tcp(client, ip(SERVER), 22, TCP_SYN)),
        template(Frame {
            payload: 120,
            ..Frame::udp(client, ip(SERVER), 62201)
        }),
    ];
    thread::spawn(move || {
        let mut turn = 0;
        while soak.running() {
            let template = templates[turn % templates.len()].clone();
            turn += 1;
            let soak_inner = Arc::clone(&soak);
            with_generator(
                &lab.client,
                lab.client_if.clone(),
                "xdp_flood",
                template,
                move |send| {
                    let until = Instant::now() + Duration::from_secs(5);
                    while soak_inner.running() && Instant::now() < until {
                        send(FLOOD_BURST)?;
                        soak_inner
                            .flood_frames
                            .fetch_add(u64::from(FLOOD_BURST), Ordering::Relaxed);
                        thread::sleep(FLOOD_PAUSE);
                    }
                    Ok(())
                },
            )
            .expect("the flood generator");
        }
    })
}

/// What the tap on the server's veth saw: frames in to a protected port,
/// by source.
#[derive(Default)]
struct Tapped {
    frames: u64,
    to_protected: BTreeMap<IpAddr, u64>,
}

/// The source and TCP destination port of an incoming frame, if it is a
/// TCP segment (after up to two VLAN tags).
fn tcp_destination(frame: &[u8]) -> Option<(IpAddr, u16)> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            at += 4;
            ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        }
    }
    let ip = frame.get(at + 2..)?;
    let (src, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0xf) * 4;
            let offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            if offset != 0 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            (IpAddr::from(src), *ip.get(9)?, ip.get(ihl..)?)
        }
        0x86dd => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            // Extension headers are left out: the soak's own TCP has none.
            (IpAddr::from(src), *ip.get(6)?, ip.get(40..)?)
        }
        _ => return None,
    };
    (proto == 6).then_some(())?;
    Some((src, u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?])))
}

fn tap(lab: &Lab, soak: Arc<Soak>) -> JoinHandle<Tapped> {
    let wire = Wire::open(&lab.server, &lab.server_if);
    thread::spawn(move || {
        let mut tapped = Tapped::default();
        while soak.running() {
            let Some(got) = wire.read(Duration::from_millis(100)) else {
                continue;
            };
            if got.outgoing {
                continue;
            }
            tapped.frames += 1;
            if let Some((src, port)) = tcp_destination(&got.frame)
                && (port == 22 || port == 2222)
            {
                *tapped.to_protected.entry(src).or_default() += 1;
            }
        }
        tapped
    })
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `xknock status --json` of the filter `config` names.
fn status(lab: &Lab, config: &str) -> Result<Value, String> {
    let out = xknock_in(&lab.server, &["status", "--json", "--config", config]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A sample of the loader and the maps.
struct Sample {
    at: f64,
    rss_kib: u64,
    maps: BTreeMap<String, (u64, u64)>,
}

fn sample(lab: &Lab, filter: &TestFilter, soak: &Soak, pid: i32) -> Sample {
    let status = status(lab, filter.arg()).expect("status");
    let maps = status["maps"]
        .as_object()
        .map(|maps| {
            maps.iter()
                .map(|(name, m)| {
                    (
                        name.clone(),
                        (
                            m["entries"].as_u64().unwrap_or(0),
                            m["max_entries"].as_u64().unwrap_or(0),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Sample {
        at: soak.now(),
        rss_kib: rss_kib(pid).unwrap_or(0),
        maps,
    }
}

#[test]
fn soak_nothing_opens_that_should_not_and_nothing_grows() {
    let minutes = minutes();
    let lab = Arc::new(Lab::new());
    set_up(&lab);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_owned();
    fs::write(dir_path.join("server.otp"), one_time_lines()).expect("write");
    fs::write(dir_path.join("client.otp"), one_time_lines()).expect("write");
    let secret = run(xknock_bin().to_str().expect("utf-8"), &["keygen"]);
    fs::write(dir_path.join("rot.key"), &secret.stdout).expect("write secret");
    fs::set_permissions(dir_path.join("rot.key"), fs::Permissions::from_mode(0o600))
        .expect("chmod");
    fs::write(dir_path.join("client.toml"), client_config(&dir_path)).expect("write");
    let keys = FwknopKeys::generate();
    let filter = Arc::new(TestFilter::new(&config(&dir_path, &keys, 0)));
    let ops = dir_path.join("ops.toml");
    fs::write(
        &ops,
        format!(
            "pin_dir = \"{}\"\n{}",
            filter.pin_dir.display(),
            config(&dir_path, &keys, 0)
        ),
    )
    .expect("write");
    let rotating = Config::parse(&config(&dir_path, &keys, 0))
        .expect("the configuration")
        .rules[3]
        .rotating()
        .cloned()
        .expect("rotating");
    let setup = Arc::new(ClientSetup {
        dir: dir_path.clone(),
        keys: keys.clone(),
        ops,
        rotating,
        state: tempfile::tempdir().expect("client state"),
    });
    let soak = Arc::new(Soak {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        attempts: Mutex::new(Vec::new()),
        down: Mutex::new(Vec::new()),
        client_breaches: Mutex::new(Vec::new()),
        flood_frames: AtomicU64::new(0),
        malformed_frames: AtomicU64::new(0),
        prober_attempts: AtomicU64::new(0),
    });
    let mut xknock = Xknock::start_on(&lab, Arc::clone(&filter), &[], false);
    let tapped = tap(&lab, Arc::clone(&soak));
    let mut threads = vec![
        floods(Arc::clone(&lab), Arc::clone(&soak)),
        malformed(Arc::clone(&lab), Arc::clone(&soak)),
        probers(Arc::clone(&lab), Arc::clone(&soak)),
    ];
    for kind in Kind::ALL {
        threads.push(client(
            Arc::clone(&lab),
            Arc::clone(&soak),
            Arc::clone(&setup),
            kind,
        ));
    }

    // The loader's life: reloads every 4-8 s (one in three invalid),
    // a kill -9 and a new run every 40-80 s, samples every 10 s.
    let end = minutes * 60.0;
    let mut rng = 0x2545_f491_u64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut samples = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let (mut reloads, mut refused, mut restarts) = (0, 0, 0);
    let mut next_kill = 40.0 + next(40) as f64;
    let mut next_reload = 4.0;
    let mut next_sample = 0.0;
    let mut variant = 0;
    // Every run's log, each line with the second it was seen (to 0.1 s,
    // or a reload's wait): a refused knock's post-mortem lines it up with
    // the loads and rotations around it.
    let mut full_log = vec![format!("{:8.1} --- the loader starts", soak.now())];
    let mut logged = 0;
    let keep_log = |xknock: &Xknock, full_log: &mut Vec<String>, logged: &mut usize| {
        let lines = xknock.log();
        for line in lines.iter().skip(*logged) {
            full_log.push(format!("{:8.1} {line}", soak.now()));
        }
        *logged = lines.len();
    };
    while soak.now() < end {
        keep_log(&xknock, &mut full_log, &mut logged);
        let now = soak.now();
        if now >= next_sample {
            samples.push(sample(&lab, &filter, &soak, xknock.pid()));
            next_sample += 10.0;
        }
        if now >= next_reload {
            reloads += 1;
            if reloads % 3 == 0 {
                filter.rewrite("[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7001\"\n");
                xknock.hup("reload refused");
                refused += 1;
                filter.rewrite(&config(&dir_path, &keys, variant));
            } else {
                variant += 1;
                filter.rewrite(&config(&dir_path, &keys, variant));
                xknock.hup("reloaded");
            }
            next_reload = soak.now() + 4.0 + next(5) as f64;
        }
        if now >= next_kill {
            let index = {
                let mut down = soak.down.lock().expect("lock");
                down.push((soak.now() - 0.5, f64::MAX));
                down.len() - 1
            };
            events.extend(xknock.events());
            // A random moment within the next second.
            thread::sleep(Duration::from_millis(next(1000)));
            keep_log(&xknock, &mut full_log, &mut logged);
            let filter_back = xknock.kill9();
            full_log.push(format!("{:8.1} --- kill -9, a new run", soak.now()));
            logged = 0;
            xknock = Xknock::start_on(&lab, filter_back, &[], false);
            soak.down.lock().expect("lock")[index].1 = soak.now() + 2.0;
            restarts += 1;
            next_kill = soak.now() + 40.0 + next(40) as f64;
        }
        thread::sleep(Duration::from_millis(100));
    }
    samples.push(sample(&lab, &filter, &soak, xknock.pid()));
    soak.stop.store(true, Ordering::SeqCst);
    let panicked: Vec<_> = threads
        .into_iter()
        .map(JoinHandle::join)
        .filter(Result::is_err)
        .collect();
    let tapped = tapped.join().expect("the tap");
    // Grants made in the last seconds reach the event stream first.
    thread::sleep(Duration::from_secs(1));
    events.extend(xknock.events());
    let final_status = status(&lab, filter.arg()).expect("status");
    keep_log(&xknock, &mut full_log, &mut logged);
    let (_, log) = xknock.stop();
    full_log.extend(
        log.iter()
            .skip(logged)
            .map(|line| format!("{:8.1} {line}", soak.now())),
    );

    let report = report(
        minutes,
        &soak,
        &tapped,
        &samples,
        &events,
        &final_status,
        reloads,
        refused,
        restarts,
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    fs::create_dir_all(&out).expect("target/soak");
    fs::write(out.join("report.md"), &report).expect("write the report");
    // For a failure's post-mortem: every run's log, every event read.
    fs::write(out.join("loader.log"), full_log.join("\n")).expect("write the log");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    fs::write(out.join("events.jsonl"), lines.join("\n")).expect("write the events");

    assert!(
        panicked.is_empty(),
        "{} soak threads panicked",
        panicked.len()
    );
    let legit: Vec<IpAddr> = Kind::ALL.iter().map(|k| ip(k.addresses().0)).collect();
    let breaches: Vec<_> = tapped
        .to_protected
        .iter()
        .filter(|(src, _)| !legit.contains(src))
        .collect();
    assert!(
        breaches.is_empty(),
        "packets from sources without a grant reached a protected port: {breaches:?}"
    );
    let client_breaches = soak.client_breaches.lock().expect("lock");
    assert!(client_breaches.is_empty(), "{client_breaches:?}");
    let attempts = soak.attempts.lock().expect("lock");
    let failed: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| {
            a.failure.is_some()
                && !(a.kind.needs_loader() && soak.overlaps_down(a.started, a.ended))
        })
        .collect();
    assert!(failed.is_empty(), "legitimate knocks failed: {failed:#?}");
    for kind in Kind::ALL {
        assert!(
            attempts
                .iter()
                .any(|a| a.kind == kind && a.failure.is_none()),
            "no {kind:?} client ever opened"
        );
    }
    // Every grant the kernel made for a knocking client while a loader
    // ran was reported.
    let unreported: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| {
            a.failure.is_none()
                && a.kind != Kind::Grant
                && !soak.overlaps_down(a.started - 1.0, a.ended + 1.0)
                && !events.iter().any(|e| {
                    let event = e["event"].as_str().unwrap_or("");
                    (event == "grant" || event == "spa_grant")
                        && e["source"].as_str() == Some(a.kind.addresses().0)
                })
        })
        .collect();
    assert!(
        unreported.is_empty(),
        "grants without an event: {unreported:#?}"
    );
    // The ring never overflowed: the flood's events stayed within their
    // budget, and a new run read what the killed one left.
    assert_eq!(
        final_status["events_lost"].as_u64(),
        Some(0),
        "the kernel lost events"
    );
    // The flood never made a grant or a flow: grants stay within the
    // clients' (one per client and rule), flows within the sessions they
    // opened (a flow's entry outlives it until the LRU needs its room).
    let sessions = attempts.len() as u64;
    for sample in &samples {
        for (map, limit) in [("GRANTS", 16), ("FLOWS", 2 * sessions + 16)] {
            if let Some((entries, _)) = sample.maps.get(map) {
                assert!(
                    *entries <= limit,
                    "{map} held {entries} entries at {:.0} s",
                    sample.at
                );
            }
        }
    }
    // Memory stays flat: no run's RSS grows past twice its first sample
    // plus 16 MiB.
    let first = samples.first().map_or(0, |s| s.rss_kib);
    for s in &samples {
        assert!(
            s.rss_kib <= 2 * first.max(1) + 16 * 1024,
            "the loader's RSS grew to {} KiB at {:.0} s (first {first} KiB)",
            s.rss_kib,
            s.at
        );
    }
    assert!(
        log.iter().all(|l| !l.contains("panicked")),
        "the loader panicked: {log:?}"
    );
}

#[allow(clippy::too_many_arguments, reason = "one report of everything")]
fn report(
    minutes: f64,
    soak: &Soak,
    tapped: &Tapped,
    samples: &[Sample],
    events: &[Value],
    status: &Value,
    reloads: u32,
    refused: u32,
    restarts: u32,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Soak: {minutes} min\n");
    let attempts = soak.attempts.lock().expect("lock");
    let _ = writeln!(
        md,
        "| client | attempts | opened | failed while the loader was down | failed |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: |");
    for kind in Kind::ALL {
        let of: Vec<&Attempt> = attempts.iter().filter(|a| a.kind == kind).collect();
        let opened = of.iter().filter(|a| a.failure.is_none()).count();
        let excused = of
            .iter()
            .filter(|a| {
                a.failure.is_some()
                    && a.kind.needs_loader()
                    && soak.overlaps_down(a.started, a.ended)
            })
            .count();
        let _ = writeln!(
            md,
            "| {} | {} | {opened} | {excused} | {} |",
            kind.name(),
            of.len(),
            of.len() - opened - excused
        );
    }
    for a in attempts.iter().filter(|a| a.failure.is_some()).take(12) {
        let _ = writeln!(
            md,
            "- failed at {:.1}-{:.1} s: {}: {}",
            a.started,
            a.ended,
            a.kind.name(),
            a.failure.as_deref().unwrap_or_default()
        );
    }
    let verdicts: u64 = status["verdicts"]
        .as_object()
        .map(|v| v.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let legit: u64 = tapped.to_protected.values().sum();
    let _ = writeln!(
        md,
        "\n- spoofed flood frames sent: {}; malformed frames: {}; prober connections: {}",
        soak.flood_frames.load(Ordering::Relaxed),
        soak.malformed_frames.load(Ordering::Relaxed),
        soak.prober_attempts.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        md,
        "- verdicts the kernel counted (last run's pins, all runs): {verdicts}; frames the tap saw pass: {}; to a protected port: {legit}, from {} sources",
        tapped.frames,
        tapped.to_protected.len()
    );
    let _ = writeln!(
        md,
        "- reloads: {reloads} ({refused} refused as invalid); kill -9 and restart: {restarts}; events read: {}; events lost (kernel): {}",
        events.len(),
        status["events_lost"]
    );
    let _ = writeln!(
        md,
        "\n| at (s) | loader RSS (KiB) | grants | flows | progress | first_steps | penalties |"
    );
    let _ = writeln!(md, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let step = (samples.len() / 30).max(1);
    for s in samples.iter().step_by(step).chain(samples.last()) {
        let get = |m: &str| {
            s.maps
                .get(m)
                .map_or_else(|| "-".to_owned(), |(e, max)| format!("{e}/{max}"))
        };
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {} | {} | {} | {} |",
            s.at,
            s.rss_kib,
            get("GRANTS"),
            get("FLOWS"),
            get("PROGRESS"),
            get("FIRST_STEPS"),
            get("PENALTIES")
        );
    }
    md
}
