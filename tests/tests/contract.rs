//! The filter's contract (README, "What the filter does") checked with the
//! tools a scanner or an attacker would use: nmap SYN and ACK scans, allow and
//! deny prefixes against real knocks, and an hping3 flood of spoofed first
//! steps. Every probe targets the lab's server inside the lab's namespaces.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, Xknock, article_config, article_knock,
    event_matches, require_program,
};
use serde_json::Value;

/// Waits until more than `already` events match `fields`.
fn wait_for_more_events(
    xknock: &Xknock,
    fields: &[(&str, &str)],
    already: usize,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if xknock.count_events(fields) > already {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A config whose top-level keys (`allow`, `deny`) come before the article rule.
fn config_with(top: &str, open_for: &str) -> String {
    format!("{top}\n{}", article_config(open_for, "\"tcp:22\""))
}

/// A child process in a process group of its own, which is killed as a
/// whole when this guard drops (so `timeout`'s child goes too).
struct Background {
    child: Option<Child>,
    what: String,
}

impl Background {
    fn spawn(mut command: Command, what: &str) -> Background {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Background {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child until finish")
    }

    fn running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` to the whole process group.
    fn signal(&mut self, signal: i32) {
        let pgid = self.child().id() as i32;
        // SAFETY: plain signal delivery to the group this guard created.
        unsafe { libc::kill(-pgid, signal) };
    }

    /// Waits (at most `timeout`) for the process to exit; returns its output.
    fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.what
            );
            thread::sleep(Duration::from_millis(50));
        }
        let child = self.child.take().expect("child");
        child.wait_with_output().expect("output")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain signal delivery to the group this guard created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            drop(child.wait());
        }
    }
}

/// Runs nmap from the client against the server's IPv4 address with
/// grepable output, bounded by `timeout 120`; returns that output.
fn nmap(lab: &Lab, args: &[&str]) -> String {
    nmap_at(lab, SERVER_V4, args)
}

fn nmap_at(lab: &Lab, target: &str, args: &[&str]) -> String {
    require_program("nmap", "nmap");
    let output = lab
        .client
        .command("timeout")
        .args(["120", "nmap"])
        .args(args)
        .args(["-oG", "-", target])
        .stdin(Stdio::null())
        .output()
        .expect("run nmap");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "nmap {args:?} failed ({:?}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("nmap {}:\n{stdout}", args.join(" "));
    stdout
}

/// The state nmap's grepable output gives `port`: as listed under `Ports:`,
/// else the `Ignored State` that stands for every port not listed.
fn nmap_state(grepable: &str, port: u16) -> String {
    let mut listed = BTreeMap::new();
    let mut ignored = None;
    for field in grepable
        .lines()
        .filter(|l| l.starts_with("Host: "))
        .flat_map(|l| l.split('\t'))
    {
        if let Some(ports) = field.strip_prefix("Ports: ") {
            for entry in ports.split(", ") {
                let mut parts = entry.trim().split('/');
                let number = parts.next().and_then(|p| p.parse::<u16>().ok());
                let state = parts.next();
                if let (Some(number), Some(state)) = (number, state) {
                    listed.insert(number, state.to_owned());
                }
            }
        } else if let Some(rest) = field.strip_prefix("Ignored State: ") {
            ignored = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    listed
        .get(&port)
        .cloned()
        .or(ignored)
        .unwrap_or_else(|| panic!("nmap gave no state for port {port}:\n{grepable}"))
}

/// A TCP echo service on the server (all addresses), serving each
/// connection on a thread of its own until the lab goes away.
fn tcp_echo(lab: &Lab, port: u16) {
    let listener = lab
        .server
        .within(move || TcpListener::bind(("::", port)).expect("bind echo"));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let Ok(mut reader) = stream.try_clone() else {
                    return;
                };
                drop(std::io::copy(&mut reader, &mut stream));
            });
        }
    });
}

/// A TCP connection from the client namespace to the server.
fn client_stream(lab: &Lab, server: &str, port: u16) -> TcpStream {
    let addr = SocketAddr::new(server.parse().expect("address"), port);
    lab.client.within(move || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .expect("write timeout");
        stream
    })
}

/// Sends `message` over an echo connection and reads it back.
fn exchange(stream: &mut TcpStream, message: &str) -> Result<(), String> {
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; message.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("read: {e}"))?;
    if back == message.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "echo returned {:?}",
            String::from_utf8_lossy(&back)
        ))
    }
}

/// hping3's closing statistics line ("N packets transmitted, ...") and its N.
fn hping3_sent(output: &Output) -> Option<(u64, String)> {
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let line = text.lines().find(|l| l.contains("packets tr"))?;
    let sent = line.split_whitespace().next()?.parse().ok()?;
    Some((sent, line.trim().to_owned()))
}

#[test]
fn sequential_syn_scan_of_every_port_never_opens_the_door() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    lab.tcp_listener(8080);
    // All TCP and ascending: exactly the order `nmap -r` tries.
    let config = "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:1111\", \"tcp:2222\", \"tcp:3333\"]\n\
                  sequence_timeout = \"10s\"\nopen_for = \"30s\"\nprotect = [\"tcp:22\"]\n";
    let xknock = Xknock::start(&lab, config, &[], false);

    let scan = nmap(
        &lab,
        &["-n", "-Pn", "-sS", "-r", "-p-", "-T5", "--max-retries", "0"],
    );
    // The scan did reach the server and did pass the first step.
    assert_eq!(nmap_state(&scan, 8080), "open", "the scan saw nothing");
    xknock.expect_event(&[
        ("event", "progress"),
        ("source", CLIENT_V4),
        ("port", "tcp:1111"),
        ("step", "1"),
    ]);
    xknock.expect_event(&[
        ("event", "reset"),
        ("source", CLIENT_V4),
        ("reason", "wrong_packet"),
    ]);
    for port in [22, 1111, 2222, 3333] {
        assert_eq!(
            nmap_state(&scan, port),
            "closed",
            "port {port} must look closed"
        );
    }
    assert_eq!(nmap_state(&scan, 8081), "closed", "closed ports still RST");

    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert_eq!(
        xknock.count_events(&[("event", "grant")]),
        0,
        "a sequential scan completed the knock: {:#?}",
        xknock.events()
    );
}

#[test]
fn ack_and_syn_probes_of_protected_and_knock_ports_are_answered_as_closed_ports() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    lab.tcp_listener(8080);
    let xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    let ports = "22,3721,8080,8081";

    let ack = nmap(&lab, &["-n", "-Pn", "-sA", "-p", ports]);
    for port in [22, 3721, 8080, 8081] {
        assert_eq!(
            nmap_state(&ack, port),
            "unfiltered",
            "an ACK to {port} must get the RST any port gives"
        );
    }

    let syn = nmap(&lab, &["-n", "-Pn", "-sS", "-p", ports]);
    assert_eq!(nmap_state(&syn, 22), "closed");
    assert_eq!(nmap_state(&syn, 3721), "closed");
    assert_eq!(nmap_state(&syn, 8081), "closed");
    assert_eq!(nmap_state(&syn, 8080), "open");
    xknock.expect_event(&[
        ("event", "denied"),
        ("source", CLIENT_V4),
        ("port", "tcp:22"),
    ]);
}

#[test]
fn with_conceal_drop_protected_and_knock_ports_stay_silent() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = format!(
        "conceal = \"drop\"\n{}",
        article_config("30s", "\"tcp:22\"")
    );
    let _xknock = Xknock::start(&lab, &config, &[], false);
    let ports = "22,3721,8081";
    let ack = nmap(&lab, &["-n", "-Pn", "-sA", "-p", ports]);
    assert_eq!(nmap_state(&ack, 22), "filtered", "ACK to 22 got a RST");
    assert_eq!(
        nmap_state(&ack, 3721),
        "filtered",
        "ACK to a knock port got a RST"
    );
    assert_eq!(nmap_state(&ack, 8081), "unfiltered");
    let syn = nmap(&lab, &["-n", "-Pn", "-sS", "-p", ports]);
    assert_eq!(nmap_state(&syn, 22), "filtered");
    assert_eq!(nmap_state(&syn, 3721), "filtered");
    assert_eq!(nmap_state(&syn, 8081), "closed");
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Silent);
}

/// The client's and server's addresses in one family, and prefixes for it.
struct Family {
    client: &'static str,
    server: &'static str,
    /// The client alone.
    host_prefix: &'static str,
    /// The whole lab subnet.
    net_prefix: &'static str,
}

const IPV4: Family = Family {
    client: CLIENT_V4,
    server: SERVER_V4,
    host_prefix: "198.18.0.2/32",
    net_prefix: "198.18.0.0/24",
};

const IPV6: Family = Family {
    client: CLIENT_V6,
    server: SERVER_V6,
    host_prefix: "fd18::2/128",
    net_prefix: "fd18::/64",
};

/// The client's `allowed` address reaches port 22 without knocking; its
/// address in the `other` family does not.
fn allowlisted_source_reaches_without_knocking(allowed: &Family, other: &Family) {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = config_with(&format!("allow = [\"{}\"]", allowed.host_prefix), "30s");
    let _xknock = Xknock::start(&lab, &config, &[], false);
    assert_eq!(lab.tcp_connect(allowed.server, 22), Reach::Open);
    assert_eq!(lab.tcp_connect(other.server, 22), Reach::Refused);
}

/// A knock from the `denied` prefix is ignored; the same knock from the
/// client's address in the `other` family opens (so the knock itself was right).
fn denylisted_prefix_knocks_are_ignored(denied: &Family, other: &Family) {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = config_with(&format!("deny = [\"{}\"]", denied.net_prefix), "30s");
    let xknock = Xknock::start(&lab, &config, &[], false);
    article_knock(&lab, denied.server);
    assert_eq!(lab.tcp_connect(denied.server, 22), Reach::Refused);
    let from_denied: Vec<Value> = xknock
        .events()
        .into_iter()
        .filter(|e| e["source"] == denied.client && e["event"] != "denied")
        .collect();
    assert!(
        from_denied.is_empty(),
        "a denied source's knock must be ignored: {from_denied:#?}"
    );
    article_knock(&lab, other.server);
    xknock.expect_event(&[("event", "grant"), ("source", other.client)]);
    assert_eq!(lab.tcp_connect(other.server, 22), Reach::Open);
    assert_eq!(lab.tcp_connect(denied.server, 22), Reach::Refused);
}

#[test]
fn allowlisted_ipv4_source_reaches_protected_port_without_knocking() {
    allowlisted_source_reaches_without_knocking(&IPV4, &IPV6);
}

#[test]
fn allowlisted_ipv6_source_reaches_over_ipv6_only() {
    allowlisted_source_reaches_without_knocking(&IPV6, &IPV4);
}

#[test]
fn denylisted_ipv4_prefix_knocks_are_ignored() {
    denylisted_prefix_knocks_are_ignored(&IPV4, &IPV6);
}

#[test]
fn denylisted_ipv6_prefix_knocks_are_ignored_ipv4_still_knocks() {
    denylisted_prefix_knocks_are_ignored(&IPV6, &IPV4);
}

#[test]
fn deny_wins_over_allow_and_over_a_knock() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let top = format!("allow = [\"198.18.0.0/24\", \"fd18::/64\"]\ndeny = [\"{CLIENT_V4}/32\"]");
    let xknock = Xknock::start(&lab, &config_with(&top, "30s"), &[], false);
    // The allowlist is in force (IPv6), but the denied IPv4 address is not let in.
    assert_eq!(lab.tcp_connect(SERVER_V6, 22), Reach::Open);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    article_knock(&lab, SERVER_V4);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert_eq!(xknock.count_events(&[("event", "grant")]), 0);
}

/// Sources past their first step the flood test's filter remembers: small,
/// to show a first-step flood never reaches that map. First steps keep the
/// default 65536 entries, which at this machine's flood rate outlive the
/// 20 ms between a client's steps many times over.
const FLOOD_PROGRESS_ENTRIES: u32 = 4096;

#[test]
fn spoofed_first_step_flood_leaves_grants_flows_and_new_knocks_working() {
    require_program("hping3", "hping3");
    let lab = Lab::new();
    tcp_echo(&lab, 22);
    let config = format!(
        "{}\n[limits]\nprogress_entries = {FLOOD_PROGRESS_ENTRIES}\n",
        article_config("120s", "\"tcp:22\"")
    );
    let xknock = Xknock::start(&lab, &config, &[], false);

    // Before: a granted IPv4 source with an admitted, echoing flow.
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    let mut flow = client_stream(&lab, SERVER_V4, 22);
    exchange(&mut flow, "before the flood").expect("admitted flow before the flood");
    assert_eq!(
        lab.tcp_connect(SERVER_V6, 22),
        Reach::Refused,
        "the client's IPv6 address holds no grant yet"
    );

    // Spoofed first steps from random IPv4 sources, at hping3's full rate.
    let mut flood_cmd = lab.client.command("timeout");
    flood_cmd.args([
        "-s",
        "INT",
        "30",
        "hping3",
        "--flood",
        "--rand-source",
        "-S",
        "-p",
        "3721",
        SERVER_V4,
    ]);
    let flood_start = Instant::now();
    let mut flood = Background::spawn(flood_cmd, "hping3 flood");
    thread::sleep(Duration::from_secs(1));
    assert!(flood.running(), "hping3 stopped early");

    // During: the client's IPv6 address, a second source, knocks.
    article_knock(&lab, SERVER_V6);
    let v6_during = lab.tcp_connect(SERVER_V6, 22);
    let flow_during = exchange(&mut flow, "during the flood");
    let flooding_throughout = flood.running();
    flood.signal(libc::SIGINT);
    let flood_output = flood.finish(Duration::from_secs(10));
    let flood_secs = flood_start.elapsed().as_secs_f64();
    let sent = hping3_sent(&flood_output);

    // After: the old grant and flow live on, and a fresh knock is heard.
    let v4_after = lab.tcp_connect(SERVER_V4, 22);
    let flow_after = exchange(&mut flow, "after the flood");
    let v4_grant = [("event", "grant"), ("source", CLIENT_V4)];
    let v4_grants_before = xknock.count_events(&v4_grant);
    article_knock(&lab, SERVER_V4);
    let fresh_grant =
        wait_for_more_events(&xknock, &v4_grant, v4_grants_before, Duration::from_secs(5));

    let events = xknock.events();
    let progress_events = events.iter().filter(|e| e["event"] == "progress").count();
    let v6_grant_event = events
        .iter()
        .any(|e| event_matches(e, &[("event", "grant"), ("source", CLIENT_V6)]));
    let (_, log) = xknock.stop();
    let verdicts = lab::verdicts(&log).unwrap_or_default().to_owned();
    let (sent, statistics) = sent.unwrap_or_else(|| {
        panic!("no statistics from hping3: {flood_output:?}\n{verdicts}\nduring: {v6_during:?}")
    });
    let report = format!(
        "flood: {sent} spoofed first steps in {flood_secs:.1}s (~{:.0} packets/s) \
         (hping3: {statistics}); progress_entries = {FLOOD_PROGRESS_ENTRIES}; \
         progress events delivered: {progress_events}\n\
         during the flood: IPv6 knock, then connect = {v6_during:?} (its grant event \
         delivered: {v6_grant_event}); admitted flow = {flow_during:?}; hping3 still \
         running: {flooding_throughout}\n\
         after the flood: IPv4 connect = {v4_after:?}; admitted flow = {flow_after:?}; \
         fresh IPv4 knock granted: {fresh_grant}\n\
         {verdicts} (drop_knock_port counts steps that found no progress, e.g. evicted)",
        sent as f64 / flood_secs
    );
    println!("{report}");

    assert!(sent > 0, "hping3 sent nothing: {report}");
    assert!(
        flooding_throughout,
        "the flood ended before the checks: {report}"
    );
    assert_eq!(
        v6_during,
        Reach::Open,
        "a knock during the flood did not open: {report}"
    );
    assert_eq!(
        flow_during,
        Ok(()),
        "admitted flow cut by the flood: {report}"
    );
    assert_eq!(v4_after, Reach::Open, "grant lost to the flood: {report}");
    assert_eq!(
        flow_after,
        Ok(()),
        "admitted flow lost to the flood: {report}"
    );
    assert!(
        fresh_grant,
        "no grant for a knock after the flood: {report}"
    );
}

#[test]
fn nmap_scans_cannot_tell_knock_and_protected_ports_from_closed_ones() {
    let lab = Lab::new();
    // Services behind every knock and protected port: a packet let through
    // would show as open.
    for port in [22, 3721, 6742] {
        lab.tcp_listener(port);
    }
    for port in [4728, 51820] {
        lab.udp_echo(port);
    }
    let config = article_config("30s", "\"tcp:22\", \"udp:51820\"");
    let _xknock = Xknock::start(&lab, &config, &[], false);
    for (target, family) in [(SERVER_V4, None), (SERVER_V6, Some("-6"))] {
        for (scan, closed_state) in [
            ("-sS", "closed"),
            ("-sA", "unfiltered"),
            ("-sF", "closed"),
            ("-sN", "closed"),
            ("-sX", "closed"),
        ] {
            let mut args = vec!["-n", "-Pn", scan, "-p", "22,3721,6742,5555"];
            args.extend(family);
            let out = nmap_at(&lab, target, &args);
            assert_eq!(nmap_state(&out, 5555), closed_state, "{scan} {target}");
            for port in [22, 3721, 6742] {
                assert_eq!(
                    nmap_state(&out, port),
                    closed_state,
                    "nmap {scan} tells port {port} of {target} from a closed port"
                );
            }
        }
        let mut args = vec!["-n", "-Pn", "-sU", "-p", "4728,51820,5556"];
        args.extend(family);
        let out = nmap_at(&lab, target, &args);
        for port in [5556, 4728, 51820] {
            assert_eq!(
                nmap_state(&out, port),
                "closed",
                "nmap -sU tells port {port} of {target} from a closed port"
            );
        }
    }
}
