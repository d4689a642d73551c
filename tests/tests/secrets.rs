//! Knock secrets a sniffer cannot replay: one-time and rotating sequences
//! open once, even replayed at once, even across a restart of the loader;
//! a rotating sequence replayed after its windows opens nothing.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
    thread,
    time::{Duration, SystemTime},
};

use lab::{
    CLIENT_V4, CLIENT_V6, Lab, Reach, SERVER_V4, SERVER_V6, TestFilter, Xknock, held_sequences,
    knock, knock_with_state, run, used_lines, xknock_bin,
};
use xknock::config::{Config, PortSpec, rotating::Rotating};

/// Three sequences in knockd's one_time_sequences form.
const SEQUENCES: &str = "7001,7002:udp,7003\n8001:udp,8002,8003:udp\n9001,9002:udp,9003\n";

fn rule(sequences_file: &Path) -> String {
    format!(
        "[[rule]]\nname = \"ssh\"\nsequences_file = \"{}\"\nsequence_timeout = \"10s\"\n\
         open_for = \"60s\"\nprotect = [\"tcp:2222\"]\n",
        sequences_file.display()
    )
}

/// Knocks the client's next unused line over IPv6 (`v6`: the server as
/// `xknock knock` takes it): it opens, and the run puts the line after it
/// in place (a message printed before this knock does not count).
fn next_line_opens_over_ipv6(lab: &Lab, xknock: &Xknock, v6: &str, client_config: &str) {
    let logged = xknock.log_len();
    knock(lab, &[v6, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);
    next_line_in_place(xknock, logged);
}

/// A run with one one-time rule: the server's and the client's copies of
/// `SEQUENCES`, the client's configuration naming its copy, and a listener
/// behind the protected port.
struct OneTimeRun {
    lab: Lab,
    xknock: Xknock,
    filter: Arc<TestFilter>,
    server_file: PathBuf,
    client_file: PathBuf,
    client_config: String,
    /// The server's addresses, as `xknock knock` takes them.
    v4: String,
    v6: String,
    _dir: tempfile::TempDir,
}

impl OneTimeRun {
    fn start() -> OneTimeRun {
        let lab = Lab::new();
        lab.tcp_listener(2222);
        let dir = tempfile::tempdir().expect("tempdir");
        let (server_file, client_file) =
            (dir.path().join("server.otp"), dir.path().join("client.otp"));
        fs::write(&server_file, SEQUENCES).expect("write");
        fs::write(&client_file, SEQUENCES).expect("write");
        let client_config = dir.path().join("client.toml");
        fs::write(&client_config, rule(&client_file)).expect("write");
        let filter = Arc::new(TestFilter::new(&rule(&server_file)));
        OneTimeRun {
            xknock: Xknock::start_on(&lab, Arc::clone(&filter), &[], false),
            v4: lab::knock_host(SERVER_V4),
            v6: lab::knock_host(SERVER_V6),
            lab,
            filter,
            server_file,
            client_file,
            client_config: client_config.to_str().expect("utf-8").to_owned(),
            _dir: dir,
        }
    }
}

/// Waits for the run to log, after its first `from` lines, that it put
/// the next one-time line in place.
fn next_line_in_place(xknock: &Xknock, from: usize) {
    // Not "putting the next one-time sequence in place failed".
    expect_log_after(xknock, from, "xknock: next one-time sequence in place");
}

/// Waits (up to 30 s) for the run to log `needle` after its first `from`
/// lines; fails the test with the log when it does not.
fn expect_log_after(xknock: &Xknock, from: usize, needle: &str) {
    assert!(
        xknock
            .wait_log_after(from, needle, Duration::from_secs(30))
            .is_some(),
        "no `{needle}`: {:?}",
        xknock.log()
    );
}

#[test]
fn one_time_sequences_open_once_even_replayed_at_once_and_across_a_restart() {
    let OneTimeRun {
        lab,
        xknock,
        filter: _,
        server_file,
        client_file,
        client_config,
        v4,
        v6,
        _dir,
    } = OneTimeRun::start();
    let client_config = client_config.as_str();

    // The client sends the first unused line of its copy, and marks it.
    knock(&lab, &[&v4, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(used_lines(&client_file), [true, false, false]);
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
    next_line_in_place(&xknock, 0);
    assert_eq!(used_lines(&server_file), [true, false, false]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    knock(&lab, &[&v6, "tcp:7001", "udp:7002", "tcp:7003"]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    assert_eq!(
        xknock.count_events(&[("event", "grant"), ("source", CLIENT_V6)]),
        0,
        "a used sequence opened: {:#?}",
        xknock.events()
    );
    // The next line opens, and the one after it goes in place.
    next_line_opens_over_ipv6(&lab, &xknock, &v6, client_config);

    // Across a kill -9 and a new run, used lines stay used; one the killed
    // run had not marked yet (the kernel spent it, the file does not say
    // so: a kill between the grant and the mark) is marked by the new run,
    // which puts the next line in place.
    let filter = xknock.kill9();
    let unmarked: String = fs::read_to_string(&server_file)
        .expect("read sequences")
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            1 => format!("{}\n", line.trim_start_matches('#')),
            _ => format!("{line}\n"),
        })
        .collect();
    fs::write(&server_file, unmarked).expect("write");
    assert_eq!(used_lines(&server_file), [true, false, false]);
    let xknock = Xknock::start_on(&lab, filter, &[], false);
    next_line_in_place(&xknock, 0);
    assert_eq!(used_lines(&server_file), [true, true, false]);
    for replay in [
        ["tcp:7001", "udp:7002", "tcp:7003"],
        ["udp:8001", "tcp:8002", "udp:8003"],
    ] {
        let mut args = vec![v4.as_str()];
        args.extend(replay);
        knock(&lab, &args);
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        xknock.count_events(&[("event", "grant")]),
        0,
        "a used sequence opened after the restart: {:#?}",
        xknock.events()
    );
    knock(&lab, &[&v4, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(used_lines(&client_file), [true, true, true]);
}

/// A one-time line used while the configuration file cannot be loaded (an
/// edit half done) still moves on: the loader reads the text it last
/// loaded anew, with the sequences file as it is then, so the next line
/// opens, and the SIGHUP of the broken file is refused as before.
#[test]
fn a_one_time_line_used_while_the_file_is_broken_moves_on() {
    let run = OneTimeRun::start();
    let (lab, xknock) = (&run.lab, &run.xknock);
    let client_config = run.client_config.as_str();

    run.filter
        .rewrite("[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:1\"]\n");
    let logged = xknock.log_len();
    xknock.send_hup();
    expect_log_after(xknock, logged, "reload refused");
    knock(lab, &[&run.v4, "--config", client_config, "--rule", "ssh"]);
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    next_line_in_place(xknock, logged);
    assert_eq!(used_lines(&run.server_file), [true, false, false]);
    expect_log_after(xknock, logged, "configuration last loaded");
    next_line_opens_over_ipv6(lab, xknock, &run.v6, client_config);
    assert_eq!(used_lines(&run.server_file), [true, true, false]);
}

/// How often the rotating rule under test changes.
const ROTATE_SECS: u64 = 6;

fn rotating_rule(secret_file: &Path) -> String {
    rotating_rule_every(secret_file, ROTATE_SECS)
}

fn rotating_rule_every(secret_file: &Path, rotate_secs: u64) -> String {
    format!(
        "[[rule]]\nname = \"ssh\"\nsecret_file = \"{}\"\nrotate = \"{rotate_secs}s\"\nsteps = 4\n\
         sequence_timeout = \"5s\"\nopen_for = \"60s\"\nprotect = [\"tcp:2222\"]\n",
        secret_file.display()
    )
}

/// The rotating rule of a configuration of one rule.
fn rotating_of(rule: &str) -> Rotating {
    Config::parse(rule).expect("valid").rules[0]
        .rotating()
        .cloned()
        .expect("rotating")
}

/// The steps of `window`'s sequence, as the client and `status` write them.
fn window_sequence(rotating: &Rotating, window: u64) -> Vec<String> {
    rotating
        .sequence(window)
        .expect("derives")
        .iter()
        .map(PortSpec::to_string)
        .collect()
}

/// The generation in place, and the sequences its rule `ssh` holds.
fn held(lab: &Lab, filter: &TestFilter) -> (u64, Vec<Vec<String>>) {
    let out = filter.xknock(lab, &["status", "--json", "--config", filter.arg()]);
    assert!(out.status.success(), "status: {out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let generation = status["generation"].as_u64().expect("generation");
    (generation, held_sequences(&status, "ssh"))
}

/// The rotating tests time their steps against the windows, and a test
/// that reloads in a loop beside one makes its rotations' loads late on a
/// busy machine: they take turns.
static WINDOWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone_with_the_windows() -> std::sync::MutexGuard<'static, ()> {
    WINDOWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A new secret in `dir`, as an operator makes it.
fn keygen_in(dir: &Path) -> PathBuf {
    let key = dir.join("ssh.key");
    let secret = run(xknock_bin().to_str().expect("utf-8"), &["keygen"]);
    fs::write(&key, &secret.stdout).expect("write secret");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    key
}

/// `xknock knock` from the client namespace with its own state directory
/// (what the client remembers of the windows it sent).
fn knock_in(lab: &Lab, state: &Path, args: &[&str]) -> Output {
    knock_with_state(lab, Some(state), args)
}

/// The steps a knock reported sending.
fn sent_steps(output: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.split_once("knocked on ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no knock reported: {stderr}"));
    let (_, steps) = line.split_once(": ").expect("target: steps");
    steps.split(' ').map(str::to_owned).collect()
}

/// Waits for a window after `after` that has run at least `min` and not
/// past `max`, and returns it.
fn early_in_a_window(rotating: &Rotating, after: u64, min: Duration, max: Duration) -> u64 {
    loop {
        let now = SystemTime::now();
        let window = rotating.window(now);
        let into = now
            .duration_since(rotating.window_start(window))
            .expect("after its start");
        if window > after && (min..=max).contains(&into) {
            return window;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rotating_sequences_open_once_and_only_in_their_windows_even_across_a_restart() {
    let _alone = alone_with_the_windows();
    let lab = Lab::new();
    lab.tcp_listener(2222);
    // A service inside the rule's port range, which a step may land on.
    lab.udp_echo(5353);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("client state");
    let key = keygen_in(dir.path());
    let rule = rotating_rule(&key);
    let rotating = rotating_of(&rule);
    let sequence = |window: u64| window_sequence(&rotating, window);
    let filter = Arc::new(TestFilter::new(&rule));
    let client_config = filter.arg().to_owned();
    let xknock = Xknock::start_on(&lab, filter, &[], false);
    let (v4, v6) = (lab::knock_host(SERVER_V4), lab::knock_host(SERVER_V6));
    // The operator hears of it (and not of the protected port, never drawn).
    let warning = xknock
        .wait_log("holds ports this host serves", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no warning of udp:5353: {:?}", xknock.log()));
    assert!(warning.contains("(udp:5353)"), "{warning}");
    let replay = |from: &str, steps: &[String]| {
        let mut args = vec![from];
        args.extend(steps.iter().map(String::as_str));
        knock(&lab, &args);
    };

    // Early in a window, so that the steps below happen while this
    // window's sequence is installed (this window and the next); one that
    // began after the loader started, so it was put in place by a rotation
    // (loaded ahead of the window), not by the load at start, which may end
    // in the window after the one it was made for.
    let started = rotating.window(SystemTime::now());
    let window = early_in_a_window(
        &rotating,
        started,
        Duration::from_millis(300),
        Duration::from_secs(1),
    );
    // In place when the window began, unless the machine is so busy that
    // the rotation's load outlasted its lead (the soak and the reload test
    // below look at that); what is tested here is what opens.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !held(&lab, xknock.filter()).1.contains(&sequence(window)) {
        assert!(
            std::time::Instant::now() < deadline,
            "window {window}'s sequence not in place 5 s into it: {:?}",
            xknock.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let sent = sent_steps(&knock_in(
        &lab,
        state.path(),
        &[&v4, "--config", &client_config, "--rule", "ssh"],
    ));
    assert_eq!(
        sent,
        sequence(window),
        "the client sends this window's sequence"
    );
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V4)]);
    assert_eq!(lab.tcp_connect(SERVER_V4, 2222), Reach::Open);

    // A sniffer replays it at once from another address: spent.
    replay(&v6, &sent);
    xknock.expect_event(&[
        ("event", "reset"),
        ("reason", "spent"),
        ("source", CLIENT_V6),
    ]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);

    // Across a kill -9 and a new run, while the sequence is still live
    // (the previous window's), it stays spent.
    let filter = xknock.kill9();
    let xknock = Xknock::start_on(&lab, filter, &[], false);
    replay(&v6, &sent);
    assert!(
        rotating.window(SystemTime::now()) <= window + 1,
        "the replay came after the sequence's windows: the restart took too long to test this"
    );
    xknock.expect_event(&[
        ("event", "reset"),
        ("reason", "spent"),
        ("source", CLIENT_V6),
    ]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);

    // The same client knocking again in the same window waits for the next
    // one (its sequence is spent); a fresh sequence opens.
    let again = knock_in(
        &lab,
        state.path(),
        &[&v6, "--config", &client_config, "--rule", "ssh"],
    );
    let next = rotating.window(SystemTime::now());
    assert!(next > window, "sent in the window it had used");
    assert_eq!(sent_steps(&again), sequence(next));
    xknock.expect_event(&[("event", "grant"), ("source", CLIENT_V6)]);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);

    // Once its windows are over, the first sequence opens nothing, even
    // for a source that never used it.
    filter_revoke(&xknock, &lab, CLIENT_V6);
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    while rotating.window(SystemTime::now()) < window + 2 {
        thread::sleep(Duration::from_millis(100));
    }
    // Past the loader's swap at the window's start.
    thread::sleep(Duration::from_millis(300));
    replay(&v6, &sent);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Refused);
    assert_eq!(
        xknock.count_events(&[("event", "grant"), ("source", CLIENT_V6)]),
        1,
        "an old sequence opened: {:#?}",
        xknock.events()
    );
    // While the current window's own sequence, unused, opens.
    let current = rotating.window(SystemTime::now());
    replay(&v6, &sequence(current));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while xknock.count_events(&[("event", "grant"), ("source", CLIENT_V6)]) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the current sequence did not open: {:#?}",
            xknock.events()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.tcp_connect(SERVER_V6, 2222), Reach::Open);
}

/// A load that begins a little before a window (a reload here; the start
/// and a one-time line used load alike) holds the sequences of a rotation's
/// lead (3 s) ahead: the window about to begin is in place before it
/// begins. Found by the soak: such a load held the window that was ending,
/// and the next one waited for the next rotation, so clients knocking
/// early in it were refused.
#[test]
fn a_reload_just_before_a_window_holds_the_window_about_to_begin() {
    const ROTATE: u64 = 8;
    let _alone = alone_with_the_windows();
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = rotating_rule_every(&keygen_in(dir.path()), ROTATE);
    let rotating = rotating_of(&rule);
    let sequence = |window: u64| window_sequence(&rotating, window);
    let xknock = Xknock::start(&lab, &rule, &[], false);
    let filter = xknock.filter();
    // The reload's own generation is read, whatever the time then: tried
    // again only when a rotation replaced it first.
    const TRIES: usize = 4;
    let mut window = 0;
    for _ in 0..TRIES {
        // 2.95-2.8 s before a window begins: within the lead.
        let ending = early_in_a_window(
            &rotating,
            window,
            Duration::from_millis(ROTATE * 1000 - 2950),
            Duration::from_millis(ROTATE * 1000 - 2800),
        );
        let (before, _) = held(&lab, filter);
        xknock.hup("reloaded");
        let (generation, held) = held(&lab, filter);
        window = rotating.window(SystemTime::now());
        if generation != before + 1 {
            continue;
        }
        assert!(
            held.contains(&sequence(ending + 1)),
            "the reload did not hold the window about to begin ({:?}), only {held:?}",
            sequence(ending + 1)
        );
        assert!(
            held.contains(&sequence(ending)),
            "the window still running went: {held:?}"
        );
        return;
    }
    panic!(
        "a rotation came between each reload and its status in {TRIES} tries: {:?}",
        xknock.log()
    );
}

fn filter_revoke(xknock: &Xknock, lab: &Lab, source: &str) {
    let filter = xknock.filter();
    let output = filter.xknock(
        lab,
        &["revoke", source, "--config", filter.arg(), "--flows"],
    );
    assert!(output.status.success(), "revoke: {output:?}");
}
