//! Single Packet Authorization end to end: the real fwknop 2.6.10 client
//! opens ssh through xknock; replays, forgeries, other keys, old packets and
//! requests beyond the entry are refused with their reasons; the real
//! fwknopd and xknock agree on the same packets; `xknock knock --spa` is
//! accepted by both, over IPv4 and IPv6; fwknopd's own files, imported with
//! `xknock import-fwknop`, open for the real client.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{net::UdpSocket, time::Duration};

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, Sshd, Xknock,
    fwknop::{FwknopKeys, Fwknopd, FwknopdOptions, FwknopdVerdict, client_packet, client_send},
    knock, require_program, ssh_refused,
};
use serde_json::Value;

const SPA_PORT: u16 = 62201;

fn tools() {
    require_program("fwknop", "fwknop-client");
    require_program("fwknopd", "fwknop-server");
}

/// An `[[spa]]` entry named "fwknop" with `keys`, opening tcp:22 and
/// tcp:2222 for `open_for`; `extra` lines go into the entry.
fn spa_config(keys: &FwknopKeys, open_for: &str, extra: &str) -> String {
    format!(
        "[[spa]]\nname = \"fwknop\"\nlisten = \"udp:{SPA_PORT}\"\nkey_base64 = \"{}\"\nhmac_key_base64 = \"{}\"\nopen_for = \"{open_for}\"\nprotect = [\"tcp:22\", \"tcp:2222\"]\n{extra}",
        keys.key_base64, keys.hmac_key_base64
    )
}

/// A packet from the real client asking for `access` for `allow`
/// (`-a`), or for its source (`-s`) when `allow` is None.
fn fwknop_packet(keys: &FwknopKeys, access: &str, allow: Option<&str>, extra: &[&str]) -> String {
    let mut args = vec!["-A", access, "-D", SERVER_V4];
    match allow {
        Some(addr) => args.extend(["-a", addr]),
        None => args.push("-s"),
    }
    args.extend_from_slice(extra);
    client_packet(keys, &args)
}

/// Sends `payload` from the client namespace to the server's SPA port.
fn send(lab: &Lab, server: &'static str, payload: &[u8]) {
    let payload = payload.to_vec();
    lab.client.within(move || {
        let bind = if server.contains(':') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(bind).expect("bind");
        socket
            .send_to(&payload, (server, SPA_PORT))
            .expect("send SPA packet");
    });
}

/// The next SPA event (grant or refusal) after `seen` of them.
fn next_spa_event(xknock: &Xknock, seen: &mut usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let spa: Vec<Value> = xknock
            .events()
            .into_iter()
            .filter(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("spa_"))
            })
            .collect();
        if let Some(event) = spa.get(*seen) {
            *seen += 1;
            return event.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SPA event #{seen}; events: {:#?}; log: {:#?}",
            xknock.events(),
            xknock.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `event` is a refusal for `reason`.
fn assert_refused(event: &Value, reason: &str) {
    assert_eq!(
        (event["event"].as_str(), event["reason"].as_str()),
        (Some("spa_refused"), Some(reason)),
        "{event:#}"
    );
}

fn assert_granted(event: &Value, admitted: &str) {
    assert_eq!(event["event"], "spa_grant", "{event:#}");
    let who = event["admitted"]
        .as_str()
        .or_else(|| event["source"].as_str());
    assert_eq!(who, Some(admitted), "{event:#}");
}

#[test]
fn the_real_fwknop_client_opens_ssh_and_what_is_not_its_own_fresh_request_opens_nothing() {
    tools();
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    let keys = FwknopKeys::generate();
    let xknock = Xknock::start(&lab, &spa_config(&keys, "3s", ""), &[], false);
    let mut seen = 0;

    let before = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(ssh_refused(&before), "ssh before SPA: {before:?}");
    assert!(
        matches!(lab.udp_exchange(SERVER_V4, SPA_PORT), Reach::Refused),
        "the SPA port answers as a closed port"
    );
    // That probe was no SPA packet (too short): the filter did not copy it.

    // The real client, sending for real.
    client_send(
        &lab.client,
        &keys,
        &["-A", "tcp/22", "-a", CLIENT_V4, "-D", SERVER_V4],
    );
    let granted = next_spa_event(&xknock, &mut seen);
    assert_granted(&granted, CLIENT_V4);
    assert_eq!(granted["rule"], "fwknop");
    assert_eq!(granted["ports"], "tcp:22");
    let after = sshd
        .ssh(&lab, SERVER_V4, "echo opened")
        .output()
        .expect("ssh");
    assert!(after.status.success(), "ssh after SPA: {after:?}");
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), "opened");

    // A captured packet: accepted once, replayed after its grant expired.
    let captured = fwknop_packet(&keys, "tcp/22", Some(CLIENT_V4), &[]);
    send(&lab, SERVER_V4, captured.as_bytes());
    assert_granted(&next_spa_event(&xknock, &mut seen), CLIENT_V4);
    xknock
        .wait_event(
            &[("event", "expired"), ("source", CLIENT_V4)],
            Duration::from_secs(8),
        )
        .expect("the grant expires");
    send(&lab, SERVER_V4, captured.as_bytes());
    assert_refused(&next_spa_event(&xknock, &mut seen), "replay");
    let replayed = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(
        ssh_refused(&replayed),
        "a replay opens nothing: {replayed:?}"
    );

    // Forgeries and strangers.
    let mut flipped = fwknop_packet(&keys, "tcp/22", Some(CLIENT_V4), &[]).into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    send(&lab, SERVER_V4, &flipped);
    assert_refused(&next_spa_event(&xknock, &mut seen), "bad_hmac");
    let other_keys = FwknopKeys::generate();
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&other_keys, "tcp/22", Some(CLIENT_V4), &[]).as_bytes(),
    );
    assert_refused(&next_spa_event(&xknock, &mut seen), "bad_hmac");
    let wrong_cipher_key = FwknopKeys {
        key_base64: other_keys.key_base64,
        hmac_key_base64: keys.hmac_key_base64.clone(),
    };
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&wrong_cipher_key, "tcp/22", Some(CLIENT_V4), &[]).as_bytes(),
    );
    assert_refused(&next_spa_event(&xknock, &mut seen), "malformed");

    // Too old, from the future, and asking for more than the entry opens.
    for offset in ["--time-offset-minus", "--time-offset-plus"] {
        let packet = fwknop_packet(&keys, "tcp/22", Some(CLIENT_V4), &[offset, "300s"]);
        send(&lab, SERVER_V4, packet.as_bytes());
        assert_refused(&next_spa_event(&xknock, &mut seen), "too_old");
    }
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&keys, "tcp/80", Some(CLIENT_V4), &[]).as_bytes(),
    );
    assert_refused(&next_spa_event(&xknock, &mut seen), "not_allowed");
    let still_closed = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(ssh_refused(&still_closed), "{still_closed:?}");

    // `-s`: the packet's source is admitted; with a client timeout, for
    // no longer than it asks.
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&keys, "tcp/22,tcp/2222", None, &["-f", "1"]).as_bytes(),
    );
    let granted = next_spa_event(&xknock, &mut seen);
    assert_granted(&granted, CLIENT_V4);
    assert_eq!(granted["ports"], "tcp:22,tcp:2222");
    assert_eq!(granted["expires_in_secs"], 1.0);
}

#[test]
fn the_replay_cache_survives_a_restart_and_source_addresses_can_be_required() {
    tools();
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let config = spa_config(&keys, "30s", "require_source_address = true\n");
    let xknock = Xknock::start(&lab, &config, &[], false);
    let mut seen = 0;
    let accepted = fwknop_packet(&keys, "tcp/2222", Some(CLIENT_V4), &[]);
    send(&lab, SERVER_V4, accepted.as_bytes());
    assert_granted(&next_spa_event(&xknock, &mut seen), CLIENT_V4);
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&keys, "tcp/2222", None, &[]).as_bytes(),
    );
    assert_refused(&next_spa_event(&xknock, &mut seen), "not_allowed");

    // A crashed loader, and a new one: the accepted packet is still known.
    let filter = xknock.kill9();
    let xknock = Xknock::start_on(&lab, filter, &[], false);
    let mut seen = 0;
    send(&lab, SERVER_V4, accepted.as_bytes());
    assert_refused(&next_spa_event(&xknock, &mut seen), "replay");
    let status = xknock
        .filter()
        .xknock(&lab, &["status", "--config", xknock.filter().arg()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("spa fwknop: SPA packets to udp:62201 open tcp:22 tcp:2222"),
        "{text}"
    );
    // Both authentic packets: the one refused for its address too, as
    // fwknopd remembers every packet it could decrypt.
    assert!(text.contains("spa packets remembered: 2"), "{text}");
}

#[test]
fn xknock_knock_spa_opens_over_ipv4_and_ipv6() {
    tools();
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let config = spa_config(&keys, "30s", "");
    let xknock = Xknock::start(&lab, &config, &[], false);
    let mut seen = 0;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("xknock.toml");
    std::fs::write(&path, &config).expect("write config");
    let path = path.to_str().expect("utf-8");
    lab.tcp_listener(2222);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    for (server, client) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        let out = knock(&lab, &[server, "--config", path, "--spa", "fwknop"]);
        assert!(out.status.success(), "{out:?}");
        let granted = next_spa_event(&xknock, &mut seen);
        assert_granted(&granted, client);
        assert_eq!(granted["ports"], "tcp:22,tcp:2222");
        assert_eq!(lab.tcp_connect(server, 2222), Reach::Open, "{server}");
    }
}

/// A load of the filter (a reload's, a rotation's, a one-time line's) is a
/// second or more of the verifier's work, or a wait for the pin
/// directory's change lock: SPA packets are judged meanwhile, not after
/// it. A client that sends one and connects right away would otherwise be
/// refused (or, with `conceal = "closed"`, reset).
#[test]
fn an_spa_packet_is_judged_while_a_reload_waits_to_load() {
    tools();
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let xknock = Xknock::start(&lab, &spa_config(&keys, "30s", ""), &[], false);
    let mut seen = 0;
    // What a trace does while it swaps programs: the reload must wait.
    let pins = xknock::loader::pins::PinDir::new(&xknock.filter().pin_dir);
    let change = pins
        .change(Duration::from_secs(5))
        .expect("the change lock");
    let from = xknock.log_len();
    xknock.send_hup();
    std::thread::sleep(Duration::from_millis(300));
    send(
        &lab,
        SERVER_V4,
        fwknop_packet(&keys, "tcp/22", None, &[]).as_bytes(),
    );
    assert_granted(&next_spa_event(&xknock, &mut seen), CLIENT_V4);
    lab.tcp_listener(22);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Open);
    assert!(
        xknock
            .wait_log_after(from, "reloaded", Duration::ZERO)
            .is_none(),
        "the reload did not wait for the lock: {:?}",
        xknock.log()
    );
    drop(change);
    xknock
        .wait_log_after(from, "reloaded", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no reload once the lock was free: {:?}", xknock.log()));
    // The grant made while the reload waited stays.
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Open);
}

/// What xknock said about a packet, in fwknopd's terms.
fn as_fwknopd(event: &Value) -> FwknopdVerdict {
    match (event["event"].as_str(), event["reason"].as_str()) {
        (Some("spa_grant"), _) => FwknopdVerdict::Accepted,
        (_, Some("replay")) => FwknopdVerdict::Replay,
        (_, Some("bad_hmac")) => FwknopdVerdict::BadHmac,
        (_, Some("malformed")) => FwknopdVerdict::DecryptionFailed,
        (_, Some("too_old")) => FwknopdVerdict::TooOld,
        (_, Some("not_allowed")) => FwknopdVerdict::NotAllowed,
        _ => FwknopdVerdict::Other(event.to_string()),
    }
}

/// fwknopd's verdicts, with the two ways it says "not allowed" as one.
fn folded(verdict: FwknopdVerdict) -> FwknopdVerdict {
    match verdict {
        FwknopdVerdict::SourceRequired => FwknopdVerdict::NotAllowed,
        other => other,
    }
}

#[test]
fn fwknopd_and_xknock_agree_on_the_same_packets() {
    tools();
    // fwknopd runs in a lab of its own: xknock's filter stops every
    // datagram to the SPA port before any socket sees it.
    let fwknopd_lab = Lab::new();
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let mut options = FwknopdOptions::new(&keys);
    options.open_ports = "tcp/22, tcp/2222".into();
    options.require_source_address = true;
    let mut fwknopd = Fwknopd::start(&fwknopd_lab.server, SERVER_V4, options);
    let config = spa_config(&keys, "30s", "require_source_address = true\n");
    let xknock = Xknock::start(&lab, &config, &[], false);
    let mut seen = 0;

    let other = FwknopKeys::generate();
    let fresh = fwknop_packet(&keys, "tcp/22", Some(CLIENT_V4), &[]);
    let mut flipped = fresh.clone().into_bytes();
    flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
    let ours = {
        let config = xknock::config::Config::parse(&config).expect("valid");
        let rule = &config.rules[0];
        xknock::client::spa::request(
            rule,
            rule.spa().expect("an SPA entry"),
            Some(CLIENT_V4.parse().expect("address")),
            std::time::SystemTime::now(),
        )
        .expect("sealed")
    };
    let packets: Vec<(&str, Vec<u8>)> = vec![
        ("fresh", fresh.clone().into_bytes()),
        ("the same again", fresh.into_bytes()),
        ("one bit flipped", flipped),
        (
            "other keys",
            fwknop_packet(&other, "tcp/22", Some(CLIENT_V4), &[]).into_bytes(),
        ),
        (
            "another encryption key",
            fwknop_packet(
                &FwknopKeys {
                    key_base64: other.key_base64.clone(),
                    hmac_key_base64: keys.hmac_key_base64.clone(),
                },
                "tcp/22",
                Some(CLIENT_V4),
                &[],
            )
            .into_bytes(),
        ),
        (
            "five minutes old",
            fwknop_packet(
                &keys,
                "tcp/22",
                Some(CLIENT_V4),
                &["--time-offset-minus", "300s"],
            )
            .into_bytes(),
        ),
        (
            "a port not opened",
            fwknop_packet(&keys, "tcp/443", Some(CLIENT_V4), &[]).into_bytes(),
        ),
        (
            "its source, where an address is required",
            fwknop_packet(&keys, "tcp/22", None, &[]).into_bytes(),
        ),
        (
            "two ports with a client timeout",
            fwknop_packet(&keys, "tcp/22,tcp/2222", Some(CLIENT_V4), &["-f", "20"]).into_bytes(),
        ),
        ("xknock knock --spa", ours.clone().into_bytes()),
        ("xknock knock --spa again", ours.into_bytes()),
    ];
    let mut accepted = 0;
    for (what, payload) in &packets {
        let theirs = folded(fwknopd.judge(payload, &fwknopd_lab.client));
        send(&lab, SERVER_V4, payload);
        let event = next_spa_event(&xknock, &mut seen);
        assert_eq!(
            as_fwknopd(&event),
            theirs,
            "{what}: xknock said {event:#}, fwknopd {:#?}",
            fwknopd.last_lines()
        );
        accepted += usize::from(theirs == FwknopdVerdict::Accepted);
    }
    assert_eq!(accepted, 3, "fresh, two ports, and xknock's own packet");
    eprintln!(
        "spa: fwknopd and xknock agreed on {} packets ({accepted} accepted)",
        packets.len()
    );
}

#[test]
fn an_imported_fwknopd_configuration_opens_for_the_real_client() {
    tools();
    let lab = Lab::new();
    let keys = FwknopKeys::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.conf");
    std::fs::write(
        &access,
        format!(
            "# as fwknopd reads it\nSOURCE              ANY\nKEY_BASE64          {}\nHMAC_KEY_BASE64     {}\n\
             OPEN_PORTS          tcp/2222\nFW_ACCESS_TIMEOUT   40\nREQUIRE_USERNAME    alice\n",
            keys.key_base64, keys.hmac_key_base64
        ),
    )
    .expect("access.conf");
    // Found beside access.conf: its SPA port moves to udp:62299.
    std::fs::write(
        dir.path().join("fwknopd.conf"),
        "PCAP_FILTER                 udp port 62299;\n",
    )
    .expect("fwknopd.conf");
    let out = std::process::Command::new(lab::xknock_bin())
        .arg("import-fwknop")
        .arg(&access)
        .output()
        .expect("run xknock import-fwknop");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("line 7: REQUIRE_USERNAME: not carried over"),
        "{said}"
    );
    let config = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(config.contains("listen = \"udp:62299\""), "{config}");
    let xknock = Xknock::start(&lab, &config, &[], false);
    lab.tcp_listener(2222);
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Refused);
    client_send(
        &lab.client,
        &keys,
        &["-A", "tcp/2222", "-D", SERVER_V4, "-s", "-p", "62299"],
    );
    let mut seen = 0;
    let granted = next_spa_event(&xknock, &mut seen);
    assert_granted(&granted, CLIENT_V4);
    assert_eq!(granted["rule"], "fwknop");
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Open);
}
