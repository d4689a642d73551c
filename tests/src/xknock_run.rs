//! `xknock run` under test: its configuration and pin directory, its
//! process, and the events and log lines it prints.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Lab, Netns, lines::Lines, unique_name, xknock_bin};

/// The sequences `xknock status --json` (`status`) reports the rule `rule`
/// holds: one for a fixed rule, the windows in place for a rotating one.
pub fn held_sequences(status: &Value, rule: &str) -> Vec<Vec<String>> {
    status["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == rule)
        .map(|r| serde_json::from_value(r["sequence"].clone()).expect("steps"))
        .collect()
}

/// Whether an event has every (key, value) in `fields`; a value that is not
/// a string is compared as the JSON it spells (`"1"` matches the number 1).
pub fn event_matches(event: &Value, fields: &[(&str, &str)]) -> bool {
    fields.iter().all(|(key, value)| match &event[*key] {
        Value::String(s) => s == value,
        other => serde_json::from_str::<Value>(value).is_ok_and(|v| v == *other),
    })
}

/// A configuration file for one test's filter, with a `pin_dir` of its
/// own under /sys/fs/bpf. Dropping it takes the filter off with `xknock
/// detach` (and removes what that left, should it fail).
pub struct TestFilter {
    pub path: PathBuf,
    pub pin_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestFilter {
    /// `config` (TOML without `pin_dir`) with this test's pin directory.
    pub fn new(config: &str) -> TestFilter {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("xknock.toml");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique_name()));
        let filter = TestFilter {
            path,
            pin_dir,
            _dir: dir,
        };
        filter.rewrite(config);
        filter
    }

    /// Replaces the file's text (the pin directory stays).
    pub fn rewrite(&self, config: &str) {
        let text = format!("pin_dir = \"{}\"\n{config}", self.pin_dir.display());
        fs::write(&self.path, text).expect("write config");
    }

    /// The path as a string, for command lines.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Runs `xknock ARGS` (in the server's namespace) to completion.
    pub fn xknock(&self, lab: &Lab, args: &[&str]) -> Output {
        xknock_in(&lab.server, args)
    }
}

impl Drop for TestFilter {
    fn drop(&mut self) {
        drop(
            Command::new(xknock_bin())
                .args(["detach", "--config"])
                .arg(&self.path)
                .output(),
        );
        drop(fs::remove_dir_all(&self.pin_dir));
    }
}

/// Runs `xknock ARGS` to completion in `netns` (`status`, `grant`,
/// `revoke`: commands that find the filter through `--config`).
pub fn xknock_in(netns: &Netns, args: &[&str]) -> Output {
    netns
        .command(xknock_bin())
        .args(args)
        .output()
        .expect("run xknock")
}

/// `xknock run` inside a namespace (the lab's server, or any `Netns` and
/// interface: `start_in`), with JSON events.
pub struct Xknock {
    child: Child,
    events: Lines,
    log: Lines,
    /// Dropped after the process is gone: detaches the filter.
    filter: Arc<TestFilter>,
}

impl Xknock {
    /// Starts xknock on the lab's server interface with `config` (TOML) and
    /// waits until it has attached. `echo` prints its output as it comes.
    /// The filter comes off when the returned value drops.
    pub fn start(lab: &Lab, config: &str, extra_args: &[&str], echo: bool) -> Xknock {
        Xknock::start_on(lab, Arc::new(TestFilter::new(config)), extra_args, echo)
    }

    /// Starts `xknock run` on `filter`'s configuration (a restart, when a
    /// filter is already pinned there).
    pub fn start_on(lab: &Lab, filter: Arc<TestFilter>, extra_args: &[&str], echo: bool) -> Xknock {
        Xknock::start_in(&lab.server, &lab.server_if, filter, extra_args, echo)
    }

    /// Starts `xknock run` in `netns` on its interface `iface` with
    /// `filter`'s configuration, and waits until it has attached.
    pub fn start_in(
        netns: &Netns,
        iface: &str,
        filter: Arc<TestFilter>,
        extra_args: &[&str],
        echo: bool,
    ) -> Xknock {
        let xknock = Xknock::spawn_in(netns, iface, filter, extra_args, echo);
        xknock.wait_attached();
        xknock
    }

    /// Starts `xknock run` on `filter`'s configuration without waiting for
    /// anything.
    pub fn spawn_on(lab: &Lab, filter: Arc<TestFilter>, extra_args: &[&str], echo: bool) -> Xknock {
        Xknock::spawn_in(&lab.server, &lab.server_if, filter, extra_args, echo)
    }

    /// Starts `xknock run` in `netns` on `iface` without waiting for
    /// anything.
    pub fn spawn_in(
        netns: &Netns,
        iface: &str,
        filter: Arc<TestFilter>,
        extra_args: &[&str],
        echo: bool,
    ) -> Xknock {
        let mut child = netns
            .command(xknock_bin())
            .args(["run", "--config"])
            .arg(&filter.path)
            .args(["--iface", iface, "--events", "json"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xknock");
        let events = Lines::default();
        let log = Lines::default();
        events.follow(
            child.stdout.take().expect("stdout"),
            echo.then_some("  event | "),
        );
        log.follow(
            child.stderr.take().expect("stderr"),
            echo.then_some("  xknock| "),
        );
        Xknock {
            child,
            events,
            log,
            filter,
        }
    }

    /// Waits until `run` says it has attached (and fails the test when it
    /// says it cannot).
    pub fn wait_attached(&self) {
        let attached = self.log.wait_for(Duration::from_secs(30), |l| {
            l.contains("attached to") || l.contains("error")
        });
        assert!(
            attached
                .as_deref()
                .is_some_and(|l| l.contains("attached to")),
            "xknock did not attach: {:?}",
            self.log.snapshot()
        );
    }

    /// Waits for an event whose fields include every (key, value) in `fields`.
    pub fn wait_event(&self, fields: &[(&str, &str)], timeout: Duration) -> Option<Value> {
        let matches = |line: &str| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| event_matches(&event, fields))
        };
        self.events
            .wait_for(timeout, matches)
            .map(|line| serde_json::from_str(&line).expect("json"))
    }

    /// How many events so far match `fields`.
    pub fn count_events(&self, fields: &[(&str, &str)]) -> usize {
        self.events()
            .iter()
            .filter(|e| event_matches(e, fields))
            .count()
    }

    /// Like `wait_event`, panicking with every event seen when none matches.
    pub fn expect_event(&self, fields: &[(&str, &str)]) -> Value {
        self.wait_event(fields, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no event {fields:?}; events: {:#?}", self.events()))
    }

    /// Every event so far, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .snapshot()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// What xknock wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// Sends SIGINT and waits for xknock to exit; returns its status.
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        // SAFETY: plain signal delivery to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the readers drain the last lines.
                drop(
                    self.log
                        .wait_for(Duration::from_secs(2), |l| l.contains("verdicts:")),
                );
                return (status, self.log.snapshot());
            }
            assert!(
                Instant::now() < deadline,
                "xknock ignored SIGINT: {:?}",
                self.log.snapshot()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Xknock {
    /// The test filter this process runs.
    pub fn filter(&self) -> &Arc<TestFilter> {
        &self.filter
    }

    /// The process id, to send signals.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for
    /// it; returns its filter, which stays pinned.
    pub fn kill9(mut self) -> Arc<TestFilter> {
        drop(self.child.kill());
        drop(self.child.wait());
        Arc::clone(&self.filter)
    }

    /// Waits until the log has a line with `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.log.wait_for(timeout, |l| l.contains(needle))
    }

    /// How many lines xknock has logged so far.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Like `wait_log`, for a line logged after the first `from` ones: a
    /// message xknock prints again and again (each reload) is waited for
    /// anew.
    pub fn wait_log_after(&self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        let index = self.log.wait_index(from, timeout, |l| l.contains(needle))?;
        self.log.snapshot().get(index).cloned()
    }

    /// Sends SIGHUP and waits for the line with `expect` that xknock logs
    /// after it (`reloaded`); fails the test with the log when none comes.
    pub fn hup(&self, expect: &str) -> String {
        let from = self.log_len();
        self.send_hup();
        self.wait_log_after(from, expect, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no `{expect}` after SIGHUP: {:?}", self.log()))
    }
}

impl Xknock {
    /// Sends SIGHUP and returns at once.
    pub fn send_hup(&self) {
        // SAFETY: plain signal delivery to our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
    }
}

impl Drop for Xknock {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}
