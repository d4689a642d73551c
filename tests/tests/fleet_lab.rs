//! The fleet lab itself: its etcd cluster forms, survives a lost member,
//! keeps its data across a full restart, and its faults (a partitioned
//! member, an isolated host) do what they say and are undone.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    process::Output,
    time::{Duration, Instant},
};

use lab::{
    Reach,
    fleet_lab::{FleetLab, MEMBERS},
    fleet_run::wait_until,
};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What `etcdctl get KEY --print-value-only` prints for `key` on member
/// `i` alone, read linearizably; None when the read fails.
fn value_on(lab: &FleetLab, i: usize, key: &str) -> Option<String> {
    let output = lab.etcdctl_member(i, &["get", key, "--print-value-only"]);
    output
        .status
        .success()
        .then(|| stdout(&output).trim_end().to_owned())
}

#[test]
fn fleet_lab_cluster_and_faults() {
    let start = Instant::now();
    let mut lab = FleetLab::new(2);
    eprintln!(
        "cluster of {MEMBERS} healthy after {} ms",
        start.elapsed().as_millis()
    );
    assert_eq!(lab.endpoints().len(), MEMBERS);
    assert_eq!(lab.hosts.len(), 2);
    for i in 0..lab.hosts.len() {
        let port = lab.host_port(i);
        let link = stdout(&lab.switch().ip(&["-d", "link", "show", "dev", &port]));
        assert!(
            link.split_whitespace().any(|word| word == "xdp"),
            "no native XDP on the bridge's end of host {i}: {link}"
        );
    }

    // The cluster forms: a write through member 0 reads back on member 2.
    let put = lab.etcdctl_member(0, &["put", "fleet/a", "one"]);
    assert!(put.status.success(), "put on member 0: {put:?}");
    assert_eq!(value_on(&lab, 2, "fleet/a").as_deref(), Some("one"));

    // The leader lost: the other two elect another and stay writable. A
    // write sent before that election is dropped (it times out), hence
    // the wait for a quorum first.
    let leader = lab.leader().expect("a healthy cluster has a leader");
    let other = (leader + 1) % MEMBERS;
    lab.kill_member(leader);
    assert!(!lab.member_running(leader));
    let lost = Instant::now();
    lab.wait_quorum();
    let new_leader = lab.leader().expect("the other two elected a leader");
    assert_ne!(new_leader, leader);
    eprintln!(
        "member {leader} led; member {new_leader} leads {} ms after it died",
        lost.elapsed().as_millis()
    );
    lab.etcdctl_ok(&["put", "fleet/b", "two"]);
    assert_eq!(value_on(&lab, other, "fleet/b").as_deref(), Some("two"));
    assert_eq!(
        value_on(&lab, leader, "fleet/b"),
        None,
        "a killed member answered"
    );
    lab.start_member(leader);
    lab.wait_healthy();
    assert_eq!(value_on(&lab, leader, "fleet/b").as_deref(), Some("two"));

    // All stopped: nothing answers. All restarted: the data is still there.
    lab.stop_all();
    let get = lab.etcdctl(&["get", "fleet/a"]);
    assert!(
        !get.status.success(),
        "etcdctl worked with no member: {get:?}"
    );
    let restart = Instant::now();
    lab.start_all();
    lab.wait_healthy();
    eprintln!(
        "restarted cluster healthy after {} ms",
        restart.elapsed().as_millis()
    );
    assert_eq!(value_on(&lab, 1, "fleet/a").as_deref(), Some("one"));
    assert_eq!(value_on(&lab, 2, "fleet/b").as_deref(), Some("two"));

    // A partitioned member stays up but cannot serve a linearizable read;
    // a serializable one it answers from what it has, which goes stale.
    assert!(lab.linearizable_read(2), "member 2 before the partition");
    let led = lab.leader() == Some(2);
    lab.partition_member(2);
    let cut = Instant::now();
    assert!(
        !lab.linearizable_read(2),
        "member 2 served a linearizable read while partitioned"
    );
    // The other two still make a quorum (after an election, if member 2
    // led).
    assert!(
        wait_until(Duration::from_secs(10), || lab.linearizable_read(0)),
        "member 0 with member 2 partitioned"
    );
    let put = lab.etcdctl_member(0, &["put", "fleet/c", "during"]);
    assert!(
        put.status.success(),
        "put with member 2 partitioned: {put:?}"
    );
    let serializable = |key: &str| {
        let output = lab.etcdctl_member(2, &["get", key, "--consistency=s", "--print-value-only"]);
        assert!(output.status.success(), "serializable get: {output:?}");
        stdout(&output).trim_end().to_owned()
    };
    assert_eq!(serializable("fleet/a"), "one");
    assert_eq!(
        serializable("fleet/c"),
        "",
        "member 2 saw a write while cut off"
    );
    let no_leader = wait_until(Duration::from_secs(10), || {
        stdout(&lab.etcdctl_member(2, &["endpoint", "status", "-w", "json"])).contains("no leader")
    });
    assert!(no_leader, "member 2 never reported losing its leader");
    eprintln!(
        "partitioned member 2 (leader before: {led}) reports no leader after {} ms",
        cut.elapsed().as_millis()
    );
    lab.heal_member(2);
    let healed = Instant::now();
    lab.wait_healthy();
    eprintln!(
        "healed member healthy after {} ms",
        healed.elapsed().as_millis()
    );
    assert!(lab.linearizable_read(2), "member 2 after healing");
    assert_eq!(value_on(&lab, 2, "fleet/c").as_deref(), Some("during"));

    // An isolated host cannot reach etcd; the client still reaches it.
    lab.host_tcp_listener(0, 2222);
    assert!(lab.client_connect(0, 2222), "client to host 0 before");
    assert_eq!(lab.client_reach(0, 2223), Reach::Refused);
    let from_host = lab.etcdctl_from_host(0, &["get", "fleet/a", "--print-value-only"]);
    assert_eq!(stdout(&from_host).trim_end(), "one", "{from_host:?}");
    lab.isolate_host(0);
    let from_host = lab.etcdctl_from_host(0, &["get", "fleet/a"]);
    assert!(
        !from_host.status.success(),
        "isolated host 0 reached etcd: {from_host:?}"
    );
    let other = lab.etcdctl_from_host(1, &["get", "fleet/a", "--print-value-only"]);
    assert_eq!(stdout(&other).trim_end(), "one", "host 1: {other:?}");
    assert!(lab.client_connect(0, 2222), "client to isolated host 0");
    lab.reconnect_host(0);
    let from_host = lab.etcdctl_from_host(0, &["get", "fleet/a", "--print-value-only"]);
    assert_eq!(stdout(&from_host).trim_end(), "one", "{from_host:?}");

    // Compaction: an old revision reads until it is compacted away.
    let before = lab.revision();
    lab.etcdctl_ok(&["put", "fleet/a", "three"]);
    assert!(lab.revision() > before);
    let old = lab.etcdctl(&["get", "fleet/a", "--rev", &before.to_string()]);
    assert!(
        old.status.success(),
        "old revision before compaction: {old:?}"
    );
    let compacted = lab.compact_to_latest();
    assert!(compacted > before);
    let old = lab.etcdctl(&["get", "fleet/a", "--rev", &before.to_string()]);
    assert!(
        !old.status.success() && String::from_utf8_lossy(&old.stderr).contains("compacted"),
        "old revision after compaction: {old:?}"
    );
    assert_eq!(value_on(&lab, 0, "fleet/a").as_deref(), Some("three"));
    eprintln!("fleet lab test took {} ms", start.elapsed().as_millis());
}
