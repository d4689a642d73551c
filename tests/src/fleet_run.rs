//! xknock hosts of a fleet in a `FleetLab`: each one's configuration (the
//! same rules, `[fleet]` naming the lab's members), its `xknock run` on
//! its own interface, and the commands run on it.

use std::{
    net::SocketAddr,
    process::Output,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Reach, TestFilter, Xknock, article_config, fleet_lab::FleetLab, knock_host, knock_in,
    unique_name, xknock_in,
};

/// The port every host protects (a listener on each host).
pub const PORT: u16 = 22;
/// The hosts' node names, in lab order.
pub const NODES: [&str; 3] = ["a", "b", "c"];

/// How long a host may take to hear of what another host did (a grant, a
/// revoke): a sweep (500 ms), a write, a watch event, with room to spare.
/// Patience, not a latency bound (the bench measures that, 6-20 ms): with
/// six fleet tests at once on two cores, each of 18 etcd members and a
/// dozen hosts whose reloads run the verifier, a second is common.
pub const PROPAGATION: Duration = Duration::from_secs(15);
/// How long a host may take to follow the fleet after it starts or after
/// etcd comes back (its backoff tops out at 2 s between members), with the
/// same patience.
pub const ONLINE: Duration = Duration::from_secs(40);

/// The article's rule "ssh" protecting `PORT` for `open_for`.
pub fn ssh_rule(open_for: &str) -> String {
    article_config(open_for, &format!("\"tcp:{PORT}\""))
}

/// A key prefix no other test uses: each test's fleet is its own.
pub fn unique_prefix() -> String {
    format!("/xknock/t{}", unique_name())
}

/// `[fleet]` for the node `node` of the fleet at `prefix` in `lab`, with
/// `extra` lines in the table (`offline_spend = "local"`).
pub fn fleet_section(lab: &FleetLab, prefix: &str, node: &str, extra: &str) -> String {
    let endpoints: Vec<String> = lab.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[fleet]\netcd = [{}]\nprefix = \"{prefix}\"\nnode = \"{node}\"\n{extra}",
        endpoints.join(", ")
    )
}

/// One xknock host of the fleet: lab host `index`, its filter (pin
/// directory and configuration file) and its `xknock run` while it runs.
pub struct FleetHost {
    pub node: String,
    pub index: usize,
    pub filter: Arc<TestFilter>,
    /// The configuration's `[fleet]` table.
    fleet: String,
    run: Option<Xknock>,
}

impl FleetHost {
    /// Writes `rules` and `[fleet]` (node `node`, `fleet_extra` in the
    /// table) for lab host `index`, starts `xknock run` there and waits
    /// until it follows the fleet (`fleet_online`).
    pub fn start(
        lab: &FleetLab,
        index: usize,
        node: &str,
        prefix: &str,
        rules: &str,
        fleet_extra: &str,
    ) -> FleetHost {
        let fleet = fleet_section(lab, prefix, node, fleet_extra);
        let mut host = FleetHost {
            node: node.to_owned(),
            index,
            filter: Arc::new(TestFilter::new(&format!("{rules}{fleet}"))),
            fleet,
            run: None,
        };
        host.restart(lab);
        host.expect_within(&[("event", "fleet_online")], ONLINE);
        host
    }

    /// Starts `xknock run` again on the same filter (pin directory and
    /// configuration), without waiting for the fleet.
    pub fn restart(&mut self, lab: &FleetLab) {
        assert!(self.run.is_none(), "node {} runs already", self.node);
        self.run = Some(Xknock::start_in(
            &lab.hosts[self.index],
            lab.host_iface(self.index),
            Arc::clone(&self.filter),
            &[],
            false,
        ));
    }

    /// Gives the configuration file other rules (the same `[fleet]`), for
    /// a reload or a restart.
    pub fn rewrite_rules(&self, rules: &str) {
        self.filter.rewrite(&format!("{rules}{}", self.fleet));
    }

    /// Stops `xknock run` with SIGINT (the filter stays, enforcing).
    pub fn stop(&mut self) {
        let run = self.run.take().expect("a running xknock");
        let (status, log) = run.stop();
        assert!(
            status.success(),
            "node {} stopped with {status}: {log:#?}",
            self.node
        );
    }

    /// The running `xknock run`.
    pub fn run(&self) -> &Xknock {
        self.run
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.node))
    }

    /// The configuration file, for `--config`.
    pub fn config(&self) -> &str {
        self.filter.arg()
    }

    /// Waits up to `timeout` for an event with `fields`; None if none came.
    pub fn wait(&self, fields: &[(&str, &str)], timeout: Duration) -> Option<Value> {
        self.run().wait_event(fields, timeout)
    }

    /// Waits up to `timeout` for an event with `fields`, panicking with this
    /// host's events and log when none comes.
    pub fn expect_within(&self, fields: &[(&str, &str)], timeout: Duration) -> Value {
        self.wait(fields, timeout).unwrap_or_else(|| {
            panic!(
                "node {}: no event {fields:?} within {timeout:?}\n{}",
                self.node,
                self.dump()
            )
        })
    }

    /// `expect_within` with `PROPAGATION`.
    pub fn expect(&self, fields: &[(&str, &str)]) -> Value {
        self.expect_within(fields, PROPAGATION)
    }

    /// Waits until `n` events with `fields` have come (a message printed
    /// again, such as a second `fleet_online`); panics with this host's
    /// events and log when they have not within `timeout`.
    pub fn expect_nth(&self, fields: &[(&str, &str)], n: usize, timeout: Duration) {
        let came = wait_until(timeout, || self.count(fields) >= n);
        assert!(
            came,
            "node {}: {} event(s) {fields:?} within {timeout:?}, not {n}\n{}",
            self.node,
            self.count(fields),
            self.dump()
        );
    }

    /// How many events so far have `fields`.
    pub fn count(&self, fields: &[(&str, &str)]) -> usize {
        self.run().count_events(fields)
    }

    /// This host's events and log, for a failure's message.
    pub fn dump(&self) -> String {
        match &self.run {
            Some(run) => format!(
                "--- node {} events:\n{}\n--- node {} log:\n{}\n",
                self.node,
                run.events()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.node,
                run.log().join("\n")
            ),
            None => format!("--- node {} is not running\n", self.node),
        }
    }

    /// Runs `xknock ARGS --config FILE` in this host's namespace.
    pub fn xknock(&self, lab: &FleetLab, args: &[&str]) -> Output {
        let mut full = args.to_vec();
        full.extend(["--config", self.config()]);
        xknock_in(&lab.hosts[self.index], &full)
    }

    /// Like `xknock`, panicking with its output when it fails; returns
    /// its standard output.
    pub fn xknock_ok(&self, lab: &FleetLab, args: &[&str]) -> String {
        let output = self.xknock(lab, args);
        assert!(
            output.status.success(),
            "node {}: xknock {args:?} failed: {}{}",
            self.node,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `xknock status --json` on this host, parsed.
    pub fn status(&self, lab: &FleetLab) -> Value {
        let text = self.xknock_ok(lab, &["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status --json gave {text:?}: {e}"))
    }

    /// `xknock knock HOST ARGS` from the lab's client to this host: to its
    /// IPv4 address, or to its IPv6 one if `v6` (from the client's IPv6
    /// address then: another source).
    pub fn knock_via(&self, lab: &FleetLab, v6: bool, args: &[&str]) -> Output {
        let addr = if v6 {
            lab.host_addr6(self.index)
        } else {
            lab.host_addr(self.index)
        };
        let host = knock_host(addr);
        let mut full = vec![host.as_str()];
        full.extend_from_slice(args);
        knock_in(&lab.client, None, &full)
    }

    /// `xknock knock HOST --config FILE ARGS` from the lab's client to this
    /// host's IPv4 address, with this host's configuration (`--rule R` or
    /// `--spa NAME` in `args`).
    pub fn knock(&self, lab: &FleetLab, args: &[&str]) -> Output {
        let mut full = vec!["--config", self.config()];
        full.extend_from_slice(args);
        self.knock_via(lab, false, &full)
    }

    /// Like `knock`, to this host's IPv6 address.
    pub fn knock6(&self, lab: &FleetLab, args: &[&str]) -> Output {
        let mut full = vec!["--config", self.config()];
        full.extend_from_slice(args);
        self.knock_via(lab, true, &full)
    }

    /// `xknock knock HOST STEPS` from the lab's client to this host's IPv4
    /// address.
    pub fn knock_steps(&self, lab: &FleetLab, steps: &[&str]) -> Output {
        self.knock_via(lab, false, steps)
    }
}

/// A fleet lab whose hosts run xknock: host i is node `NODES[i]`, all of
/// one fleet (a prefix of the test's own), each with a listener on `PORT`.
/// The hosts go (their runs stopped, filters detached) before the lab.
pub struct Fleet {
    pub hosts: Vec<FleetHost>,
    pub lab: FleetLab,
    pub prefix: String,
}

impl Fleet {
    /// A lab with one host per entry of `configs` (its rules, and extra
    /// lines for its `[fleet]` table), each following the fleet.
    pub fn start(configs: &[(&str, &str)]) -> Fleet {
        let mut lab = FleetLab::new(configs.len());
        let prefix = unique_prefix();
        for i in 0..configs.len() {
            lab.host_tcp_listener(i, PORT);
        }
        let hosts = configs
            .iter()
            .enumerate()
            .map(|(i, (rules, extra))| FleetHost::start(&lab, i, NODES[i], &prefix, rules, extra))
            .collect();
        Fleet { hosts, lab, prefix }
    }

    /// Two hosts, a and b, with `ssh_rule(open_for)`.
    pub fn two(open_for: &str) -> Fleet {
        let rules = ssh_rule(open_for);
        Fleet::start(&[(&rules, ""), (&rules, "")])
    }

    /// Panics unless the client (IPv4) meets `want` at every host.
    pub fn assert_all(&self, want: Reach, context: &str) {
        for i in 0..self.hosts.len() {
            self.assert_reach(i, false, want, context);
        }
    }

    /// Every host's events and log, for a failure's message.
    pub fn dump(&self) -> String {
        self.hosts.iter().map(FleetHost::dump).collect()
    }

    /// What a connection from the client's IPv4 address to host `i`'s
    /// `PORT` meets.
    pub fn reach(&self, i: usize) -> Reach {
        self.lab.client_reach(i, PORT)
    }

    /// What a connection from the client's IPv6 address to host `i`'s
    /// `PORT` meets.
    pub fn reach6(&self, i: usize) -> Reach {
        let addr = SocketAddr::new(self.lab.host_addr6(i).parse().expect("an address"), PORT);
        self.lab.client.tcp_connect(addr, Duration::from_secs(1))
    }

    /// Panics with every host's events and log unless the client (over
    /// IPv6 if `v6`) meets `want` at host `i`'s `PORT`.
    pub fn assert_reach(&self, i: usize, v6: bool, want: Reach, context: &str) {
        let got = if v6 { self.reach6(i) } else { self.reach(i) };
        assert_eq!(
            got,
            want,
            "{context}: the client (IPv{}) at node {}'s port {PORT}\n{}",
            if v6 { 6 } else { 4 },
            NODES[i],
            self.dump()
        );
    }

    /// The fleet's keys under `sub` (`grants/`, `spent/`), as etcd lists
    /// them (keys only).
    pub fn keys(&self, sub: &str) -> Vec<String> {
        let prefix = format!("{}/{sub}", self.prefix);
        self.lab
            .etcdctl_ok(&["get", "--prefix", &prefix, "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes;
/// whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
