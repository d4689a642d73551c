//! xknock attached to a real veth in network namespaces, driven by real
//! clients: OpenSSH, knockd's `knock`, and xknock's own `knock`.

use std::{sync::Arc, thread, time::Duration};

use lab::{
    ARTICLE_STEPS, CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, Sshd, Xknock,
    article_config, article_knock, knock, require_program, ssh_refused,
};

fn config_file(lab_dir: &tempfile::TempDir, text: &str) -> String {
    let path = lab_dir.path().join("xknock.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8").to_owned()
}

#[test]
fn ssh_is_invisible_until_knock_and_again_after_open_for() {
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    let xknock = Xknock::start(&lab, &article_config("4s", "\"tcp:22\""), &[], false);

    let before = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(
        ssh_refused(&before),
        "ssh before knocking must time out, got {before:?}"
    );
    xknock.expect_event(&[
        ("event", "denied"),
        ("source", CLIENT_V4),
        ("port", "tcp:22"),
    ]);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(&dir, &article_config("4s", "\"tcp:22\""));
    knock(&lab, &[SERVER_V4, "--config", &config, "--rule", "ssh"]);
    for (step, port) in [(1, "tcp:3721"), (2, "udp:4728")] {
        xknock.expect_event(&[
            ("event", "progress"),
            ("step", &step.to_string()),
            ("port", port),
        ]);
    }
    xknock.expect_event(&[("event", "grant"), ("rule", "ssh"), ("source", CLIENT_V4)]);

    let after = sshd
        .ssh(&lab, SERVER_V4, "echo knocked")
        .output()
        .expect("ssh");
    assert!(after.status.success(), "ssh after knocking: {after:?}");
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), "knocked");

    xknock
        .wait_event(
            &[("event", "expired"), ("source", CLIENT_V4)],
            Duration::from_secs(8),
        )
        .unwrap_or_else(|| panic!("grant never expired: {:#?}", xknock.events()));
    let expired = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(
        ssh_refused(&expired),
        "ssh after open_for must time out, got {expired:?}"
    );

    let filter = Arc::clone(xknock.filter());
    let (status, log) = xknock.stop();
    assert!(status.success(), "xknock exit: {status:?} {log:?}");
    assert!(log.iter().any(|l| l.contains("stays on")), "{log:?}");
    assert_eq!(
        lab.attached_xdp().as_deref(),
        Some("xdp"),
        "SIGINT must leave the filter attached"
    );
    let out = filter.xknock(&lab, &["detach", "--config", filter.arg()]);
    assert!(out.status.success(), "detach: {out:?}");
    assert_eq!(lab.attached_xdp(), None, "detach takes the filter off");
    assert!(!filter.pin_dir.exists(), "detach removes the pins");
}

#[test]
fn ssh_session_opened_during_grant_outlives_it() {
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    let xknock = Xknock::start(&lab, &article_config("2s", "\"tcp:22\""), &[], false);
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    // The session prints, outlives the grant, then prints again.
    let session = sshd
        .ssh(&lab, SERVER_V4, "echo start; sleep 5; echo end")
        .output()
        .expect("ssh");
    assert!(
        xknock.events().iter().any(|e| e["event"] == "expired"),
        "grant should have expired mid-session"
    );
    assert!(
        session.status.success(),
        "session cut at expiry: {session:?}"
    );
    assert_eq!(String::from_utf8_lossy(&session.stdout), "start\nend\n");
}

#[test]
fn wrong_order_does_not_open() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    knock(&lab, &[SERVER_V4, "tcp:3721", "tcp:6742", "udp:4728"]);
    xknock.expect_event(&[("event", "reset"), ("reason", "wrong_packet")]);
    knock(&lab, &[SERVER_V4, "udp:4728", "tcp:3721", "tcp:6742"]);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert!(
        !xknock.events().iter().any(|e| e["event"] == "grant"),
        "{:#?}",
        xknock.events()
    );
}

#[test]
fn sequence_slower_than_its_timeout_does_not_open() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = article_config("30s", "\"tcp:22\"")
        .replace("sequence_timeout = \"5s\"", "sequence_timeout = \"1s\"");
    let xknock = Xknock::start(&lab, &config, &[], false);
    let mut slow = vec!["--delay", "700ms", SERVER_V4];
    slow.extend(ARTICLE_STEPS);
    knock(&lab, &slow);
    xknock.expect_event(&[("event", "reset"), ("reason", "timeout")]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert!(!xknock.events().iter().any(|e| e["event"] == "grant"));
    // The same knock in time opens.
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Open);
}

#[test]
fn ipv6_knock_opens_for_the_ipv6_source_only() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    assert_eq!(lab.tcp_connect(SERVER_V6, 22), Reach::Refused);
    article_knock(&lab, SERVER_V6); // as `xknock knock [fd18::1] ...`
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 22), Reach::Open);
    // The grant belongs to the IPv6 address, not to the host.
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
}

#[test]
fn udp_protected_port_opens_after_knock() {
    let lab = Lab::new();
    lab.udp_echo(51820);
    let xknock = Xknock::start(&lab, &article_config("30s", "\"udp:51820\""), &[], false);
    assert_eq!(lab.udp_exchange(SERVER_V4, 51820), Reach::Refused);
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    assert_eq!(lab.udp_exchange(SERVER_V4, 51820), Reach::Open);
}

#[test]
fn knockd_knock_client_opens_the_door() {
    require_program("knock", "knockd");
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    let xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    let out = lab
        .client
        .command("knock")
        .args(["-d", "20", SERVER_V4, "3721", "4728:udp", "6742"])
        .output()
        .expect("knock");
    assert!(out.status.success(), "knockd's knock failed: {out:?}");
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    let ssh = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(ssh.status.success(), "ssh after knockd's knock: {ssh:?}");
}

#[test]
fn knock_ports_and_protected_ports_look_closed_other_ports_untouched() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    lab.tcp_listener(8080);
    let _xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    assert_eq!(
        lab.tcp_connect(SERVER_V4, 8080),
        Reach::Open,
        "unprotected port must be untouched"
    );
    assert_eq!(
        lab.tcp_connect(SERVER_V4, 8081),
        Reach::Refused,
        "closed unprotected port still answers RST"
    );
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert_eq!(
        lab.tcp_connect(SERVER_V4, 6742),
        Reach::Refused,
        "a knock port must look closed"
    );
}

#[test]
fn generic_mode_attaches_as_xdpgeneric_and_the_host_answers_as_a_closed_port() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let xknock = Xknock::start(
        &lab,
        &article_config("30s", "\"tcp:22\""),
        &["--mode", "generic"],
        false,
    );
    assert_eq!(lab.attached_xdp().as_deref(), Some("xdpgeneric"));
    // Steered to the host's closed port, in generic mode too: refused.
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert_eq!(lab.tcp_connect(SERVER_V4, 3721), Reach::Refused);
    assert!(
        xknock.log().iter().any(|l| l.contains("generic mode")),
        "{:?}",
        xknock.log()
    );
    let _filter = Arc::clone(xknock.filter());
    let (status, _) = xknock.stop();
    assert!(status.success());
    assert_eq!(
        lab.attached_xdp().as_deref(),
        Some("xdpgeneric"),
        "stopping leaves the filter"
    );
}

#[test]
fn native_mode_attaches_as_native_xdp() {
    let lab = Lab::new();
    let _xknock = Xknock::start(
        &lab,
        &article_config("30s", "\"tcp:22\""),
        &["--mode", "native"],
        false,
    );
    assert_eq!(lab.attached_xdp().as_deref(), Some("xdp"));
}

#[test]
fn a_source_that_keeps_failing_is_ignored_for_the_penalty() {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = "[penalty]\nfailures = 2\nwindow = \"30s\"\nduration = \"3s\"\n".to_owned()
        + &article_config("30s", "\"tcp:22\"");
    let xknock = Xknock::start(&lab, &config, &[], false);
    // Two failed attempts: the first step, then a wrong one.
    for _ in 0..2 {
        knock(&lab, &[SERVER_V4, "tcp:3721", "tcp:6742"]);
    }
    let penalized = xknock.expect_event(&[("event", "penalized"), ("source", CLIENT_V4)]);
    assert!(
        penalized["ignored_for_secs"]
            .as_f64()
            .is_some_and(|s| s > 2.0),
        "{penalized}"
    );
    // The right sequence is ignored while the penalty lasts...
    article_knock(&lab, SERVER_V4);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Refused);
    assert!(
        !xknock.events().iter().any(|e| e["event"] == "grant"),
        "{:#?}",
        xknock.events()
    );
    // ...and works once it is over.
    thread::sleep(Duration::from_millis(3200));
    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 22), Reach::Open);
    let (_, log) = xknock.stop();
    let verdicts = lab::verdicts(&log).expect("verdict line");
    // Only the ignored first step counts as penalized: the later steps match
    // no progress and drop as knock-port packets.
    assert!(verdicts.contains("drop_penalized=1"), "{verdicts}");
}

/// `ping -c 1 -s SIZE HOST` from the client; whether a reply came back.
fn ping(lab: &Lab, host: &str, size: usize) -> bool {
    lab.client
        .command("ping")
        .args(["-c", "1", "-W", "2", "-s", &size.to_string(), host])
        .output()
        .expect("run ping")
        .status
        .success()
}

#[test]
fn a_stock_ping_knocks_and_every_ping_is_still_answered() {
    require_program("ping", "iputils-ping");
    let lab = Lab::new();
    lab.tcp_listener(8443);
    let config = "[[rule]]\nname = \"web-admin\"\nsequence = [\"icmp:512\", \"udp:4728\", \"tcp:6742\"]\n\
                  sequence_timeout = \"10s\"\nopen_for = \"30s\"\nprotect = [\"tcp:8443\"]\n";
    let xknock = Xknock::start(&lab, config, &[], false);
    for (server, client) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        assert_eq!(lab.tcp_connect(server, 8443), Reach::Refused);
        // The knock's ping is answered like any other.
        assert!(ping(&lab, server, 512), "the knocking ping got no reply");
        xknock.expect_event(&[
            ("event", "progress"),
            ("port", "icmp:512"),
            ("step", "1"),
            ("source", client),
        ]);
        knock(&lab, &[&lab::knock_host(server), "udp:4728", "tcp:6742"]);
        xknock.expect_event(&[("event", "grant"), ("source", client)]);
        assert_eq!(lab.tcp_connect(server, 8443), Reach::Open);
    }
    // A ping of another size mid-sequence resets it (strict progress), and
    // is answered too.
    let (host, client) = (lab::knock_host(SERVER_V4), CLIENT_V4);
    let resets = xknock.count_events(&[("event", "reset"), ("source", client)]);
    assert!(ping(&lab, SERVER_V4, 512));
    assert!(ping(&lab, SERVER_V4, 100), "another size got no reply");
    knock(&lab, &[&host, "udp:4728", "tcp:6742"]);
    xknock.expect_event(&[
        ("event", "reset"),
        ("reason", "wrong_packet"),
        ("port", "icmp:100"),
    ]);
    assert!(xknock.count_events(&[("event", "reset"), ("source", client)]) > resets);
    // xknock's own client sends the echo request too.
    knock(&lab, &[&host, "icmp:512", "udp:4728", "tcp:6742"]);
    let grants = || xknock.count_events(&[("event", "grant"), ("source", client)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while grants() < 2 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(grants(), 2, "{:#?}", xknock.events());
}
