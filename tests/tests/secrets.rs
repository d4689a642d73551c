//! Knock secrets a sniffer cannot replay: one-time sequences open once,
//! even replayed at once, even across a restart of the loader.

use std::{fs, sync::Arc, time::Duration};

use lab::{CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, TestFilter, Xknock, knock};

/// Three sequences in knockd's one_time_sequences form.
const SEQUENCES: &str = "7001,7002:udp,7003\n8001:udp,8002,8003:udp\n9001,9002:udp,9003\n";

fn rule(sequences_file: &std::path::Path) -> String {
    format!(
        "[[rule]]\nname = \"ssh\"\nsequences_file = \"{}\"\nsequence_timeout = \"10s\"\n\
         open_for = \"60s\"\nprotect = [\"tcp:2222\"]\n",
        sequences_file.display()
    )
}

fn used(path: &std::path::Path) -> Vec<bool> {
    fs::read_to_string(path)
        .expect("read sequences")
        .lines()
        .map(|l| l.starts_with('#'))
        .collect()
}

#[test]
fn one_time_sequences_open_once_even_replayed_at_once_and_across_a_restart() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_file, client_file) = (dir.path().join("server.otp"), dir.path().join("client.otp"));
    fs::write(&server_file, SEQUENCES).expect("write");
    fs::write(&client_file, SEQUENCES).expect("write");
    let client_config = dir.path().join("client.toml");
    fs::write(&client_config, rule(&client_file)).expect("write");
    let client_config = client_config.to_str().expect("utf-8");
    let filter = Arc::new(TestFilter::new(&rule(&server_file)));
    let xknock = Xknock::start_on(&lab, filter.clone(), &[], false);
    let (v4, v6) = (lab::knock_host(SERVER_V4), lab::knock_host(SERVER_V6));

    // The client sends the first unused line of its copy, and marks it.
    knock(&lab, &[&v4, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(used(&client_file), [true, false, false]);
    // A sniffer replays it at once from another address: the kernel
    // refuses it, before the loader has moved on or after.
    knock(&lab, &[&v6, "tcp:7001", "udp:7002", "tcp:7003"]);
    // (Loading the next sequence takes the loader far longer than the
    // replay takes: this is the kernel's refusal.)
    xknock.expect_event(&[
        ("event", "reset"),
        ("reason", "spent"),
        ("source", CLIENT_V6),
    ]);
    assert!(
        xknock
            .wait_log("next one-time sequence in place", Duration::from_secs(30))
            .is_some(),
        "{:?}",
        xknock.log()
    );
    assert_eq!(used(&server_file), [true, false, false]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    knock(&lab, &[&v6, "tcp:7001", "udp:7002", "tcp:7003"]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    assert_eq!(
        xknock.count_events(&[("event", "grant"), ("source", CLIENT_V6)]),
        0,
        "a used sequence opened: {:#?}",
        xknock.events()
    );
    // The next line opens.
    knock(&lab, &[&v6, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);
    assert!(
        xknock
            .wait_log("next one-time sequence in place", Duration::from_secs(30))
            .is_some()
    );

    // Across a kill -9 and a new run, used lines stay used.
    let filter = xknock.kill9();
    let xknock = Xknock::start_on(&lab, filter, &[], false);
    for replay in [
        ["tcp:7001", "udp:7002", "tcp:7003"],
        ["udp:8001", "tcp:8002", "udp:8003"],
    ] {
        let mut args = vec![v4.as_str()];
        args.extend(replay);
        knock(&lab, &args);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        xknock.count_events(&[("event", "grant")]),
        0,
        "a used sequence opened after the restart: {:#?}",
        xknock.events()
    );
    knock(&lab, &[&v4, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(used(&client_file), [true, true, true]);
}
