//! Never fail open, never forget: the filter outlives `xknock run` (kill -9
//! included), a new run adopts it with its grants and flows, an upgrade or
//! a reload swaps the program without a gap, and status, grant, revoke,
//! detach and the metrics endpoint work against it, with or without a run.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, Sshd, TestFilter, Xknock,
    article_config, ssh_refused,
};
use serde_json::Value;

/// `xknock ARGS` against `filter`'s configuration; panics unless it succeeds.
fn xknock_ok(lab: &Lab, filter: &TestFilter, args: &[&str]) -> String {
    let out = filter.xknock(lab, args);
    assert!(
        out.status.success(),
        "xknock {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(lab: &Lab, filter: &TestFilter) -> Value {
    let out = xknock_ok(lab, filter, &["status", "--config", filter.arg(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// The live grants `status` lists, as (source, rule).
fn grants(status: &Value) -> Vec<(String, String)> {
    status["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .map(|g| {
            (
                g["source"].as_str().expect("source").to_owned(),
                g["rule"].as_str().expect("rule").to_owned(),
            )
        })
        .collect()
}

fn program_id(status: &Value) -> u64 {
    status["interfaces"][0]["program_id"]
        .as_u64()
        .expect("an interface")
}

fn egress_program_id(status: &Value) -> u64 {
    status["interfaces"][0]["egress_program_id"]
        .as_u64()
        .expect("an egress program")
}

/// An interactive ssh session: each line sent comes back prefixed.
struct Session {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn open(sshd: &Sshd, lab: &Lab) -> Session {
        let mut child = sshd
            .ssh(lab, SERVER_V4, "while read l; do echo \"got $l\"; done")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ssh");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            child,
            stdin,
            lines,
        }
    }

    /// Whether `word` comes back within a few seconds.
    fn echoes(&mut self, word: &str) -> bool {
        if writeln!(self.stdin, "{word}").is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line == format!("got {word}") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

#[test]
fn kill_9_leaves_the_filter_enforcing_and_a_new_run_keeps_grants_and_flows() {
    let lab = Lab::new();
    let sshd = Sshd::start(&lab);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:22\""), &[], false);
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    let mut session = Session::open(&sshd, &lab);
    assert!(
        session.echoes("before"),
        "the session must open after the knock"
    );

    let filter = xknock.kill9();
    assert_eq!(
        lab.attached_xdp().as_deref(),
        Some("xdp"),
        "kill -9 must leave the filter"
    );
    // The unknown source (the client's IPv6 address never knocked).
    let unknown = sshd.ssh(&lab, SERVER_V6, "true").output().expect("ssh");
    assert!(
        ssh_refused(&unknown),
        "an unknown source must still be stopped: {unknown:?}"
    );
    assert!(
        session.echoes("orphaned"),
        "the admitted session must live on"
    );
    let again = sshd.ssh(&lab, SERVER_V4, "true").output().expect("ssh");
    assert!(
        again.status.success(),
        "the grant must keep working: {again:?}"
    );
    let orphaned = status(&lab, &filter);
    let before = program_id(&orphaned);

    let xknock = Xknock::start_on(&lab, Arc::clone(&filter), &[], false);
    assert!(
        xknock
            .log()
            .iter()
            .any(|l| l.contains("replacing the program on its pinned link")),
        "{:?}",
        xknock.log()
    );
    let adopted = status(&lab, &filter);
    assert_ne!(program_id(&adopted), before, "a new program runs");
    assert_eq!(
        grants(&adopted),
        [(CLIENT_V4.to_owned(), "ssh".to_owned())],
        "the grant is kept"
    );
    assert!(
        adopted["admitted_flows"].as_u64() >= Some(1),
        "the session's flow is kept: {adopted}"
    );
    assert!(
        session.echoes("adopted"),
        "the session lives through the restart"
    );
    let unknown = sshd.ssh(&lab, SERVER_V6, "true").output().expect("ssh");
    assert!(ssh_refused(&unknown), "{unknown:?}");
}

/// Connects from the client's IPv6 address (which never knocks) to the
/// protected port over and over until stopped; counts the attempts and the
/// connections that opened.
struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    /// Probes refused: answered with an RST that carried the probed port.
    refused: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab, port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let path = format!("/var/run/netns/{}", lab.client.name);
        let (s, a, o, r) = (
            Arc::clone(&stop),
            Arc::clone(&attempts),
            Arc::clone(&opened),
            Arc::clone(&refused),
        );
        let thread = thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let addr = std::net::SocketAddr::new(SERVER_V6.parse().expect("addr"), port);
            while !s.load(Ordering::Relaxed) {
                a.fetch_add(1, Ordering::Relaxed);
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        r.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => 0,
                };
            }
        });
        Prober {
            stop,
            attempts,
            opened,
            refused,
            thread: Some(thread),
        }
    }

    /// Stops probing; returns (attempts, opened, refused).
    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("prober");
        }
        (
            self.attempts.load(Ordering::Relaxed),
            self.opened.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn restarts_upgrades_and_reloads_never_leave_a_moment_without_the_filter() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:2222\""), &[], false);
    let first = program_id(&status(&lab, xknock.filter()));
    let first_egress = egress_program_id(&status(&lab, xknock.filter()));
    let prober = Prober::start(&lab, 2222);
    thread::sleep(Duration::from_millis(300));
    // A crash, and an upgrade: a second run loads its program afresh and
    // swaps it onto the pinned link.
    let filter = xknock.kill9();
    let xknock = Xknock::start_on(&lab, Arc::clone(&filter), &[], false);
    let upgraded = program_id(&status(&lab, &filter));
    let upgraded_egress = egress_program_id(&status(&lab, &filter));
    // A reload swaps again.
    xknock.hup("reloaded");
    let reloaded = program_id(&status(&lab, &filter));
    let reloaded_egress = egress_program_id(&status(&lab, &filter));
    thread::sleep(Duration::from_millis(300));
    let (attempts, opened, refused) = prober.finish();
    assert!(attempts > 20, "only {attempts} probes");
    assert_eq!(
        opened, 0,
        "{opened} of {attempts} probes reached the service"
    );
    // Concealed as a closed port all along: the host's RST got the probed
    // port back at every instant, the egress program swapped with the filter.
    assert_eq!(
        refused, attempts,
        "{refused} of {attempts} probes got a closed port's RST"
    );
    assert!(
        first != upgraded && upgraded != reloaded,
        "{first} {upgraded} {reloaded}"
    );
    assert!(
        first_egress != upgraded_egress && upgraded_egress != reloaded_egress,
        "egress programs {first_egress} {upgraded_egress} {reloaded_egress}"
    );
    eprintln!(
        "{attempts} probes through a crash, an upgrade and a reload: none opened, all refused"
    );
    // And the port does open for a source that knocks.
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Open);
}

/// The article's rule with another sequence.
fn rule_with(sequence: &str, extra: &str) -> String {
    format!(
        "{extra}[[rule]]\nname = \"ssh\"\nsequence = [{sequence}]\n\
         sequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:2222\"]\n"
    )
}

#[test]
fn sighup_applies_a_good_file_and_keeps_grants_and_a_bad_one_changes_nothing() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    let old = "\"tcp:3721\", \"udp:4728\", \"tcp:6742\"";
    let new = "\"udp:5911\", \"tcp:1388\", \"tcp:8203\"";
    let xknock = Xknock::start(&lab, &rule_with(old, ""), &[], false);
    let filter = Arc::clone(xknock.filter());
    // The first reload line after the signal says how the reload went.
    let hup = |xknock: &Xknock, expect: &str| {
        let line = xknock.hup("reload");
        assert!(line.contains(expect), "{line}");
        line
    };
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);

    filter.rewrite(&rule_with(new, ""));
    hup(&xknock, "reloaded");
    let after = status(&lab, &filter);
    assert_eq!(
        after["rules"][0]["sequence"],
        serde_json::json!(["udp:5911", "tcp:1388", "tcp:8203"])
    );
    assert_eq!(grants(&after), [(CLIENT_V4.to_owned(), "ssh".to_owned())]);
    assert_eq!(
        lab.tcp_connect(SERVER_V4, 2222),
        Reach::Open,
        "the grant is kept"
    );
    // The old sequence opens nothing any more; the new one does.
    lab::knock(
        &lab,
        &[
            &lab::knock_host(SERVER_V6),
            "tcp:3721",
            "udp:4728",
            "tcp:6742",
        ],
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    lab::knock(
        &lab,
        &[
            &lab::knock_host(SERVER_V6),
            "udp:5911",
            "tcp:1388",
            "tcp:8203",
        ],
    );
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);

    // A file that is not valid: reported with its line, nothing changes.
    let before = status(&lab, &filter);
    filter.rewrite(&format!("{}\nbogus = ", rule_with(old, "")));
    let line = hup(&xknock, "reload refused");
    assert!(line.contains("line"), "{line}");
    // A map size the running filter cannot change.
    filter.rewrite(&rule_with(old, "[limits]\ngrant_entries = 1024\n"));
    let line = hup(&xknock, "reload refused");
    assert!(line.contains("limits.grant_entries"), "{line}");
    let unchanged = status(&lab, &filter);
    assert_eq!(unchanged["rules"], before["rules"]);
    assert_eq!(program_id(&unchanged), program_id(&before));
    assert_eq!(grants(&unchanged).len(), 2);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);

    // A rule that goes takes its grants with it.
    filter.rewrite(&rule_with(new, "").replace("name = \"ssh\"", "name = \"admin\""));
    hup(&xknock, "reloaded");
    assert!(grants(&status(&lab, &filter)).is_empty());
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Refused);
}

/// A signal that arrives while `run` loads the filter waits for the event
/// loop: a SIGHUP reloads once it runs, a SIGINT then stops it cleanly. (A
/// signal before the handlers existed ended the process by its default
/// action: SIGHUP's kills.)
#[test]
fn signals_sent_while_run_loads_the_filter_wait_for_its_event_loop() {
    let lab = Lab::new();
    // A two-step sequence: its warning is printed before the filter loads.
    let config = rule_with("\"tcp:3721\", \"udp:4728\"", "");
    let xknock = Xknock::spawn_on(&lab, Arc::new(TestFilter::new(&config)), &[], false);
    assert!(
        xknock
            .wait_log("warning", Duration::from_secs(30))
            .is_some(),
        "no warning: {:?}",
        xknock.log()
    );
    xknock.hup("reloaded");
    xknock.wait_attached();
    let (status, log) = xknock.stop();
    assert!(status.success(), "{status:?} {log:?}");
    assert!(log.iter().any(|l| l.contains("stopped;")), "{log:?}");
}

#[test]
fn status_grant_revoke_and_detach_work_with_and_without_a_run() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:2222\""), &[], false);
    let filter = Arc::clone(xknock.filter());
    let config = filter.arg();

    let text = xknock_ok(&lab, &filter, &["status", "--config", config]);
    assert!(
        text.contains("rule ssh: tcp:3721 udp:4728 tcp:6742"),
        "{text}"
    );
    let json = status(&lab, &filter);
    assert_eq!(json["interfaces"][0]["name"], lab.server_if.as_str());
    assert_eq!(json["interfaces"][0]["mode"], "native");
    assert_eq!(json["maps"]["GRANTS"]["max_entries"], 8192);

    // Against the running filter.
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    xknock_ok(
        &lab,
        &filter,
        &[
            "grant", CLIENT_V6, "--config", config, "--rule", "ssh", "--for", "30s",
        ],
    );
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);
    let json = status(&lab, &filter);
    assert_eq!(grants(&json), [(CLIENT_V6.to_owned(), "ssh".to_owned())]);
    let left = json["grants"][0]["expires_in_secs"]
        .as_f64()
        .expect("time left");
    assert!((25.0..=30.0).contains(&left), "{left}");
    xknock_ok(&lab, &filter, &["revoke", CLIENT_V6, "--config", config]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    let refused = filter.xknock(
        &lab,
        &["grant", CLIENT_V6, "--config", config, "--rule", "nope"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no rule named `nope`"));
    let busy = filter.xknock(&lab, &["detach", "--config", config]);
    assert!(
        !busy.status.success(),
        "detach must refuse while run holds the filter"
    );
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{busy:?}"
    );

    // Against an orphaned filter.
    let filter = xknock.kill9();
    let config = filter.arg();
    xknock_ok(
        &lab,
        &filter,
        &["grant", CLIENT_V4, "--config", config, "--rule", "ssh"],
    );
    let stream = lab
        .client
        .within(|| std::net::TcpStream::connect((SERVER_V4, 2222)).expect("granted connect"));
    let json = status(&lab, &filter);
    assert_eq!(grants(&json), [(CLIENT_V4.to_owned(), "ssh".to_owned())]);
    let left = json["grants"][0]["expires_in_secs"]
        .as_f64()
        .expect("time left");
    assert!(left > 55.0, "the rule's open_for is the default: {left}");
    // The IPv6 connection made under the first grant is still admitted too.
    let flows = json["admitted_flows"].as_u64().expect("flows");
    assert!(flows >= 2, "{json}");
    xknock_ok(
        &lab,
        &filter,
        &["revoke", CLIENT_V4, "--config", config, "--flows"],
    );
    let json = status(&lab, &filter);
    assert!(grants(&json).is_empty());
    assert_eq!(
        json["admitted_flows"].as_u64(),
        Some(flows - 1),
        "--flows ends the source's admitted flow"
    );
    drop(stream);
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Refused);

    xknock_ok(&lab, &filter, &["detach", "--config", config]);
    assert_eq!(lab.attached_xdp(), None);
    assert!(!filter.pin_dir.exists());
    assert_eq!(
        lab.tcp_connect(SERVER_V6, 2222),
        Reach::Open,
        "off means off"
    );
    let gone = filter.xknock(&lab, &["status", "--config", config]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no filter is pinned"));
}

#[test]
fn a_second_run_and_a_changed_map_size_leave_the_running_filter_alone() {
    let lab = Lab::new();
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:22\""), &[], false);
    let filter = Arc::clone(xknock.filter());
    let before = program_id(&status(&lab, &filter));
    let second = filter.xknock(
        &lab,
        &["run", "--config", filter.arg(), "--iface", &lab.server_if],
    );
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{second:?}"
    );

    let filter = xknock.kill9();
    filter.rewrite(&format!(
        "[limits]\nflow_entries = 4096\n{}",
        article_config("60s", "\"tcp:22\"")
    ));
    let resized = filter.xknock(
        &lab,
        &["run", "--config", filter.arg(), "--iface", &lab.server_if],
    );
    assert!(!resized.status.success());
    let stderr = String::from_utf8_lossy(&resized.stderr);
    assert!(
        stderr.contains("limits.flow_entries")
            && stderr.contains("65536")
            && stderr.contains("4096"),
        "{stderr}"
    );
    assert_eq!(
        program_id(&status(&lab, &filter)),
        before,
        "the filter is unchanged"
    );
    assert_eq!(lab.attached_xdp().as_deref(), Some("xdp"));
}

#[test]
fn metrics_are_served_in_prometheus_text_format() {
    let lab = Lab::new();
    let xknock = Xknock::start(
        &lab,
        &article_config("60s", "\"tcp:22\""),
        &["--metrics", "127.0.0.1:9464"],
        false,
    );
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    xknock.hup("reloaded");
    let curl = lab
        .server
        .command("curl")
        .args([
            "--silent",
            "--show-error",
            "--include",
            "http://127.0.0.1:9464/metrics",
        ])
        .output()
        .expect("curl");
    assert!(curl.status.success(), "{curl:?}");
    let text = String::from_utf8_lossy(&curl.stdout);
    for needle in [
        "HTTP/1.1 200 OK",
        "Content-Type: text/plain; version=0.0.4",
        "# TYPE xknock_verdicts_total counter",
        "xknock_verdicts_total{reason=\"drop_knock_granted\"} 1",
        "# TYPE xknock_grants gauge",
        "xknock_grants 1",
        "xknock_map_max_entries{map=\"grants\"} 8192",
        "# TYPE xknock_events_lost_total counter",
        "xknock_reloads_total{result=\"success\"} 1",
        "xknock_reloads_total{result=\"failure\"} 0",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    let missing = lab
        .server
        .command("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .arg("http://127.0.0.1:9464/other")
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
}

#[test]
fn trace_shows_each_decision_about_one_source_and_puts_the_filter_back() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    let xknock = Xknock::start(&lab, &article_config("60s", "\"tcp:2222\""), &[], false);
    let filter = Arc::clone(xknock.filter());
    let own = program_id(&status(&lab, &filter));
    let mut trace = lab
        .server
        .command(lab::xknock_bin())
        .args(["trace", CLIENT_V4, "--config", filter.arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xknock trace");
    let stderr = BufReader::new(trace.stderr.take().expect("stderr"));
    let mut stderr_lines = stderr.lines();
    let started = stderr_lines
        .next()
        .expect("a line from trace")
        .expect("utf-8");
    assert!(started.contains("tracing 198.18.0.2"), "{started}");
    assert_ne!(
        program_id(&status(&lab, &filter)),
        own,
        "the traced program runs"
    );

    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Refused);
    assert_eq!(
        lab.tcp_connect(SERVER_V6, 2222),
        Reach::Refused,
        "not traced"
    );
    lab::article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Open);
    thread::sleep(Duration::from_millis(500));
    // SAFETY: plain signal delivery to our own child.
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    let out = trace.wait_with_output().expect("trace");
    let rest: Vec<String> = stderr_lines.map_while(Result::ok).collect();
    assert!(out.status.success(), "trace: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("program is back on 1 link")),
        "{rest:?}"
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!("xknock trace {CLIENT_V4}:\n{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .all(|l| l.contains("source ::ffff:198.18.0.2 ")),
        "only the traced source: {lines:#?}"
    );
    for verdict in [
        "| drop_protected",
        "| drop_knock_advanced",
        "| drop_knock_granted",
        "| pass_granted",
    ] {
        assert!(
            lines.iter().any(|l| l.ends_with(verdict)),
            "no {verdict:?} in {lines:#?}"
        );
    }
    let granted = lines
        .iter()
        .find(|l| l.ends_with("| drop_knock_granted"))
        .expect("the grant");
    assert!(granted.contains("port 6742 flags 2"), "{granted}");
    assert_eq!(
        program_id(&status(&lab, &filter)),
        own,
        "the filter's own program is back"
    );
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
}

#[test]
fn a_reload_resets_progress_through_a_changed_sequence_and_keeps_it_through_an_unchanged_one() {
    let lab = Lab::new();
    lab.tcp_listener(2222);
    // Two rules; "ssh" changes its first steps but keeps its last one.
    let config = |ssh: &str| {
        format!(
            "{}[[rule]]\nname = \"web\"\nsequence = [\"udp:7001\", \"tcp:7002\", \"udp:7003\"]\n\
             sequence_timeout = \"30s\"\nopen_for = \"60s\"\nprotect = [\"tcp:8080\"]\n",
            rule_with(ssh, "").replace("sequence_timeout = \"10s\"", "sequence_timeout = \"30s\"")
        )
    };
    let xknock = Xknock::start(
        &lab,
        &config("\"tcp:3721\", \"udp:4728\", \"tcp:6742\""),
        &[],
        false,
    );
    let filter = Arc::clone(xknock.filter());
    // Two steps of each rule, each from a source of its own (another packet
    // from the same source would reset the other rule's progress).
    let (v4, v6) = (lab::knock_host(SERVER_V4), lab::knock_host(SERVER_V6));
    lab::knock(&lab, &[&v4, "tcp:3721", "udp:4728"]);
    lab::knock(&lab, &[&v6, "udp:7001", "tcp:7002"]);
    xknock.expect_event(&[("event", "progress"), ("rule", "web"), ("step", "2")]);
    filter.rewrite(&config("\"udp:5911\", \"tcp:1388\", \"tcp:6742\""));
    xknock.hup("reloaded");
    // The old sequence's progress would complete the new one with its last
    // step; it must count for nothing.
    lab::knock(&lab, &[&v4, "tcp:6742"]);
    // The unchanged rule's progress is kept: its last step grants.
    lab::knock(&lab, &[&v6, "udp:7003"]);
    xknock.expect_event(&[("event", "grant"), ("rule", "web"), ("source", CLIENT_V6)]);
    assert_eq!(
        grants(&status(&lab, &filter)),
        [(CLIENT_V6.to_owned(), "web".to_owned())],
        "only the unchanged rule's knock completed"
    );
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Refused);
}

#[test]
fn status_says_when_the_filters_interface_is_gone_and_check_fails_then() {
    let lab = Lab::new();
    let xknock = Xknock::start(&lab, &article_config("30s", "\"tcp:22\""), &[], false);
    let filter = Arc::clone(xknock.filter());
    let (exit, log) = xknock.stop();
    assert!(exit.success(), "{log:?}");
    let check = |lab: &Lab| filter.xknock(lab, &["status", "--config", filter.arg(), "--check"]);
    let healthy = check(&lab);
    assert!(healthy.status.success(), "{healthy:?}");
    assert_eq!(status(&lab, &filter)["interfaces"][0]["gone"], false);

    // The interface goes (a veth's peer goes with it), the pin stays.
    lab.server.ip(&["link", "del", &lab.server_if]);
    let text = xknock_ok(&lab, &filter, &["status", "--config", filter.arg()]);
    assert!(
        text.contains(&format!("interface {}: GONE", lab.server_if)),
        "{text}"
    );
    assert_eq!(status(&lab, &filter)["interfaces"][0]["gone"], true);
    let failed = check(&lab);
    assert!(!failed.status.success(), "{failed:?}");
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("are gone"), "{said}");
}
