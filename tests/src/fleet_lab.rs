//! A lab for the fleet: xknock hosts that share grants, revokes and spent
//! secrets through an etcd v3 cluster.
//!
//! Every machine is a network namespace joined by a veth pair to one Linux
//! bridge, which lives in a `switch` namespace of its own: three etcd
//! members, N xknock hosts and one client, all in 198.19.0.0/24 and
//! fd19::/64. Each member runs Debian's `etcd` (3.4) as a child process.
//!
//! Network faults are made on the bridge, with an nftables table of the
//! bridge family in the switch namespace: frames vanish between two
//! namespaces as they would on a broken network, and neither end sees
//! anything but silence (no local "operation not permitted").
//!
//! Every name is unique to the process and call; processes, namespaces and
//! the temporary directory go when the lab drops, also on panic.

use std::{
    fmt::Write as _,
    fs::{self, File},
    io::Write as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::{Condvar, Mutex, PoisonError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Reach, attach_reference, require_program, require_root, run, unique_name};

/// How many etcd members the lab runs.
pub const MEMBERS: usize = 3;
/// The port etcd serves clients on.
pub const CLIENT_PORT: u16 = 2379;
/// The port etcd members talk to each other on.
pub const PEER_PORT: u16 = 2380;

/// The fleet's IPv4 network, a /24, without its last byte.
const V4_NET: &str = "198.19.0.";
/// The fleet's IPv6 network, a /64.
const V6_NET: &str = "fd19::";
/// Last address bytes: the bridge itself (where `etcdctl` runs from),
/// member i, host i and the client.
const SWITCH_BYTE: usize = 1;
const MEMBER_BYTE: usize = 11;
const HOST_BYTE: usize = 21;
const CLIENT_BYTE: usize = 31;
/// The nftables table (bridge family, switch namespace) that holds the
/// faults.
const FAULT_TABLE: &str = "xkfleet";
/// How long the cluster may take to become healthy or reach quorum.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// How many lines of each member's log a failure shows.
const LOG_TAIL: usize = 40;

/// The IPv4 and IPv6 addresses of the machine whose last byte is `byte`.
fn addresses(byte: usize) -> (String, String) {
    (format!("{V4_NET}{byte}"), format!("{V6_NET}{byte}"))
}

/// Puts `netns` on the bridge: a veth pair whose `iface` end is in `netns`
/// (with the addresses of `byte`) and whose `port` end is enslaved to
/// `bridge` in `switch`.
fn join_bridge(switch: &Netns, bridge: &str, netns: &Netns, iface: &str, port: &str, byte: usize) {
    run(
        "ip",
        &[
            "link",
            "add",
            iface,
            "netns",
            &netns.name,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &switch.name,
        ],
    );
    switch.ip(&["link", "set", port, "master", bridge, "up"]);
    let (v4, v6) = addresses(byte);
    netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", iface]);
    netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", iface, "nodad"]);
    netns.ip(&["link", "set", iface, "up"]);
}

/// One etcd member: its namespace, address, data directory, log file and
/// process (None while stopped).
struct Member {
    name: String,
    netns: Netns,
    addr: String,
    addr6: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Cut off from the other members by `partition_member`.
    partitioned: bool,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.addr)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.addr)
    }

    /// The last lines of the log, for a failure's message.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
        format!(
            "--- etcd {} ({}), last {} lines of {}:\n{}\n",
            self.name,
            self.addr,
            tail.len(),
            self.log.display(),
            tail.join("\n")
        )
    }
}

/// One xknock host: its namespace, the interface xknock attaches to and its
/// addresses.
struct Host {
    iface: String,
    addr: String,
    addr6: String,
    /// Cut off from every member by `isolate_host`.
    isolated: bool,
}

/// A TCP listener in a host's namespace (all addresses, IPv4 and IPv6) that
/// accepts and closes connections on a thread until it drops.
struct Acceptor {
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes the blocked accept with
        // an error, which ends the thread.
        // SAFETY: a valid socket fd this value owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

/// Three etcd members, `hosts` xknock hosts and a client on one bridge.
///
/// etcd runs with `--heartbeat-interval 100 --election-timeout 1000` (a
/// lost leader is replaced after one to two seconds, the randomized
/// election timeout) and `--experimental-watch-progress-notify-interval
/// 1s`, which etcd 3.4.23 accepts: a watcher that asks for progress
/// notifications hears the member's revision every second instead of
/// every ten minutes, so the fleet's tests need not wait long for one. A
/// partitioned member goes on sending them, with its stale revision.
/// Pre-vote stays off, as Debian's etcd 3.4 ships it: a member that
/// rejoins after a partition forces an election.
///
/// The bridge's end of each host's veth pair runs `xdp_pass` of the
/// reference object: frames xknock sends back with XDP_TX (its answers)
/// only reach a veth peer that runs XDP itself (see `Lab`).
pub struct FleetLab {
    /// The xknock hosts' namespaces.
    pub hosts: Vec<Netns>,
    /// The client's namespace (knocks, connections to the hosts).
    pub client: Netns,
    host_info: Vec<Host>,
    client_addr: String,
    client_addr6: String,
    members: Vec<Member>,
    acceptors: Vec<Acceptor>,
    /// `xdp_pass` on the bridge's end of each host's veth pair.
    _port_xdp: Vec<aya::Ebpf>,
    /// Holds the bridge; `etcdctl` runs here, on the bridge's own address.
    switch: Netns,
    token: String,
    dir: tempfile::TempDir,
    /// Last, so the slot is given back once all of the above is gone.
    _slot: FleetSlot,
}

/// Fleet labs one test process runs at once. Each is three etcd members
/// and two or three hosts whose every start, reload and rotation runs the
/// verifier over the filter's programs; six at once (the suite's six test
/// threads) starved etcd on two cores until heartbeats timed out and
/// watches stalled.
const FLEETS_AT_ONCE: usize = 3;
static FLEETS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One of the `FLEETS_AT_ONCE` places, held while a lab lives.
struct FleetSlot;

impl FleetSlot {
    /// Waits for a place.
    fn take() -> FleetSlot {
        let (running, freed) = &FLEETS;
        let mut running = running.lock().unwrap_or_else(PoisonError::into_inner);
        while *running >= FLEETS_AT_ONCE {
            running = freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        FleetSlot
    }
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        let (running, freed) = &FLEETS;
        *running.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        freed.notify_one();
    }
}

impl FleetLab {
    /// Builds the lab with `hosts` xknock hosts (2 or 3) and waits until
    /// every member is healthy; panics with the members' logs if they are
    /// not within 30 s.
    pub fn new(hosts: usize) -> FleetLab {
        let slot = FleetSlot::take();
        require_root();
        require_program("ip", "iproute2");
        require_program("nsenter", "util-linux");
        require_program("nft", "nftables");
        require_program("etcd", "etcd-server");
        require_program("etcdctl", "etcd-client");
        assert!(
            (1..=9).contains(&hosts),
            "a fleet lab has 1 to 9 hosts, not {hosts}"
        );
        let base = unique_name();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{base}-fleet"))
            .tempdir()
            .expect("tempdir for the fleet lab");

        let switch = Netns::create(format!("{base}-sw"));
        let bridge = format!("{base}br");
        switch.ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        let (switch_v4, switch_v6) = addresses(SWITCH_BYTE);
        switch.ip(&["addr", "add", &format!("{switch_v4}/24"), "dev", &bridge]);
        switch.ip(&[
            "addr",
            "add",
            &format!("{switch_v6}/64"),
            "dev",
            &bridge,
            "nodad",
        ]);
        switch.ip(&["link", "set", &bridge, "up"]);

        let members = (0..MEMBERS)
            .map(|i| {
                let netns = Netns::create(format!("{base}-m{i}"));
                let iface = format!("{base}m{i}");
                join_bridge(
                    &switch,
                    &bridge,
                    &netns,
                    &iface,
                    &format!("{iface}b"),
                    MEMBER_BYTE + i,
                );
                let (addr, addr6) = addresses(MEMBER_BYTE + i);
                Member {
                    name: format!("m{i}"),
                    netns,
                    addr,
                    addr6,
                    data_dir: dir.path().join(format!("m{i}.etcd")),
                    log: dir.path().join(format!("m{i}.log")),
                    child: None,
                    partitioned: false,
                }
            })
            .collect();

        let mut host_netns = Vec::new();
        let mut host_info = Vec::new();
        let mut port_xdp = Vec::new();
        for i in 0..hosts {
            let netns = Netns::create(format!("{base}-h{i}"));
            let iface = format!("{base}h{i}");
            join_bridge(
                &switch,
                &bridge,
                &netns,
                &iface,
                &format!("{iface}b"),
                HOST_BYTE + i,
            );
            let port = format!("{iface}b");
            port_xdp.push(switch.within(move || attach_reference("xdp_pass", &port)));
            let (addr, addr6) = addresses(HOST_BYTE + i);
            host_netns.push(netns);
            host_info.push(Host {
                iface,
                addr,
                addr6,
                isolated: false,
            });
        }

        let client = Netns::create(format!("{base}-cli"));
        let client_if = format!("{base}c");
        join_bridge(
            &switch,
            &bridge,
            &client,
            &client_if,
            &format!("{client_if}b"),
            CLIENT_BYTE,
        );
        let (client_addr, client_addr6) = addresses(CLIENT_BYTE);

        let mut lab = FleetLab {
            _slot: slot,
            hosts: host_netns,
            client,
            host_info,
            client_addr,
            client_addr6,
            members,
            acceptors: Vec::new(),
            _port_xdp: port_xdp,
            switch,
            token: format!("{base}-fleet"),
            dir,
        };
        for i in 0..MEMBERS {
            lab.spawn_member(i, "new");
        }
        lab.wait_healthy();
        lab
    }

    /// Starts member `i`'s etcd; `state` is `new` for the first start and
    /// `existing` for a restart on the same data directory.
    fn spawn_member(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let cluster = cluster.join(",");
        let member = &mut self.members[i];
        assert!(member.child.is_none(), "etcd member {i} is already running");
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", member.log.display()));
        writeln!(
            log,
            "=== xknock fleet lab: starting {} ({state})",
            member.name
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", member.log.display()));
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", member.log.display()));
        let client_url = member.client_url();
        let peer_url = member.peer_url();
        let child = member
            .netns
            .command("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd member {i}: {e}"));
        member.child = Some(child);
    }

    /// Kills member `i` with SIGKILL and waits for it; its data directory
    /// stays for `start_member`.
    pub fn kill_member(&mut self, i: usize) {
        let mut child = self.members[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("etcd member {i} is not running"));
        drop(child.kill());
        child
            .wait()
            .unwrap_or_else(|e| panic!("wait for etcd member {i}: {e}"));
    }

    /// Restarts member `i` on its data directory (`--initial-cluster-state
    /// existing`) without waiting for it: see `wait_healthy`.
    pub fn start_member(&mut self, i: usize) {
        self.spawn_member(i, "existing");
    }

    /// Whether member `i`'s etcd runs (was started and not killed).
    pub fn member_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Kills every running member.
    pub fn stop_all(&mut self) {
        for i in 0..MEMBERS {
            if self.member_running(i) {
                self.kill_member(i);
            }
        }
    }

    /// Restarts every stopped member without waiting: see `wait_healthy`.
    pub fn start_all(&mut self) {
        for i in 0..MEMBERS {
            if !self.member_running(i) {
                self.start_member(i);
            }
        }
    }

    /// Waits until every running member answers `etcdctl endpoint health`
    /// (a proposal committed through it, so each needs quorum); panics with
    /// the members' logs after 30 s.
    pub fn wait_healthy(&self) {
        let running: Vec<String> = (0..MEMBERS)
            .filter(|&i| self.member_running(i))
            .map(|i| self.endpoint(i))
            .collect();
        assert!(!running.is_empty(), "no etcd member is running");
        let start = Instant::now();
        loop {
            let output = etcdctl_in(&self.switch, &running, &["endpoint", "health"]);
            if output.status.success() {
                return;
            }
            if start.elapsed() > HEALTH_DEADLINE {
                panic!(
                    "etcd members {running:?} not healthy after {HEALTH_DEADLINE:?}: {}{}\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr),
                    self.member_logs()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until some running member serves a linearizable read (the
    /// cluster has a leader and a quorum behind it); panics with the
    /// members' logs after 30 s.
    pub fn wait_quorum(&self) {
        let start = Instant::now();
        loop {
            for i in (0..MEMBERS).filter(|&i| self.member_running(i)) {
                if self.linearizable_read(i) {
                    return;
                }
            }
            assert!(
                start.elapsed() < HEALTH_DEADLINE,
                "the etcd cluster has no quorum after {HEALTH_DEADLINE:?}:\n{}",
                self.member_logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The running member that says it leads (`etcdctl endpoint status`);
    /// None while none does (during an election) or while two do (a
    /// partitioned leader that has not stepped down yet).
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..MEMBERS).filter(|&i| self.member_running(i)).collect();
        let mut leader = None;
        for &i in &running {
            let output = self.etcdctl_member(i, &["endpoint", "status", "-w", "json"]);
            if !output.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("etcdctl endpoint status -w json gave {text:?}: {e}"));
            let status = &json[0]["Status"];
            let (Some(own), Some(seen)) = (
                status["header"]["member_id"].as_u64(),
                status["leader"].as_u64(),
            ) else {
                // No leader field: this member knows of no leader.
                continue;
            };
            if own == seen {
                match leader {
                    None => leader = Some(i),
                    Some(_) => return None,
                }
            }
        }
        leader
    }

    /// Whether member `i` serves a linearizable read within a second
    /// (what a member without quorum cannot do).
    pub fn linearizable_read(&self, i: usize) -> bool {
        self.etcdctl_member(
            i,
            &[
                "get",
                "--consistency=l",
                "--command-timeout=1s",
                "xknock-lab-probe",
            ],
        )
        .status
        .success()
    }

    /// Cuts member `i` off from the other members (all traffic between
    /// them is dropped on the bridge) while everyone else still reaches
    /// it: it loses quorum but stays up and answers on its client port.
    pub fn partition_member(&mut self, i: usize) {
        self.members[i].partitioned = true;
        self.apply_faults();
    }

    /// Undoes `partition_member`.
    pub fn heal_member(&mut self, i: usize) {
        self.members[i].partitioned = false;
        self.apply_faults();
    }

    /// Cuts host `i` off from every etcd member (all traffic between them
    /// is dropped on the bridge); the client still reaches it.
    pub fn isolate_host(&mut self, i: usize) {
        self.host_info[i].isolated = true;
        self.apply_faults();
    }

    /// Undoes `isolate_host`.
    pub fn reconnect_host(&mut self, i: usize) {
        self.host_info[i].isolated = false;
        self.apply_faults();
    }

    /// Writes the fault table anew from the partitioned members and
    /// isolated hosts, in one nftables transaction.
    fn apply_faults(&self) {
        let mut rules = String::new();
        let mut cut = |a: (&str, &str), others: Vec<(&str, &str)>| {
            if others.is_empty() {
                return;
            }
            let v4: Vec<&str> = others.iter().map(|o| o.0).collect();
            let v6: Vec<&str> = others.iter().map(|o| o.1).collect();
            let (v4, v6) = (v4.join(", "), v6.join(", "));
            for (family, own, set) in [("ip", a.0, &v4), ("ip6", a.1, &v6)] {
                writeln!(
                    rules,
                    "    {family} saddr {own} {family} daddr {{ {set} }} drop"
                )
                .expect("write to a String");
                writeln!(
                    rules,
                    "    {family} daddr {own} {family} saddr {{ {set} }} drop"
                )
                .expect("write to a String");
            }
        };
        for (i, member) in self.members.iter().enumerate() {
            if member.partitioned {
                let others = self
                    .members
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, m)| (m.addr.as_str(), m.addr6.as_str()))
                    .collect();
                cut((&member.addr, &member.addr6), others);
            }
        }
        for host in self.host_info.iter().filter(|h| h.isolated) {
            let members = self
                .members
                .iter()
                .map(|m| (m.addr.as_str(), m.addr6.as_str()))
                .collect();
            cut((&host.addr, &host.addr6), members);
        }
        // Declaring the table first makes deleting it safe when it is not
        // there yet.
        let script = format!(
            "table bridge {FAULT_TABLE}\ndelete table bridge {FAULT_TABLE}\n\
             table bridge {FAULT_TABLE} {{\n  chain forward {{\n    \
             type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let path = self.dir.path().join("faults.nft");
        fs::write(&path, &script).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let output = self
            .switch
            .command("nft")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run nft");
        assert!(
            output.status.success(),
            "nft -f failed: {}\n{script}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Host `i`'s IPv4 address.
    pub fn host_addr(&self, i: usize) -> &str {
        &self.host_info[i].addr
    }

    /// Host `i`'s IPv6 address.
    pub fn host_addr6(&self, i: usize) -> &str {
        &self.host_info[i].addr6
    }

    /// The interface in host `i`'s namespace that joins the bridge: where
    /// xknock attaches.
    pub fn host_iface(&self, i: usize) -> &str {
        &self.host_info[i].iface
    }

    /// The bridge's end of host `i`'s veth pair, in the switch namespace.
    pub fn host_port(&self, i: usize) -> String {
        format!("{}b", self.host_info[i].iface)
    }

    /// The switch namespace, which holds the bridge.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Gives the client another IPv4 address of the fleet's /24 (its last
    /// byte `byte`, beside the hosts' and members'); returns it.
    pub fn add_client_addr(&self, byte: u8) -> String {
        let addr = format!("{V4_NET}{byte}");
        let out = self.client.ip(&["-o", "link", "show"]);
        let iface = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
            .find(|name| name != "lo")
            .expect("the client's interface");
        self.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", &iface]);
        addr
    }

    /// The client's IPv4 address.
    pub fn client_addr(&self) -> &str {
        &self.client_addr
    }

    /// The client's IPv6 address.
    pub fn client_addr6(&self) -> &str {
        &self.client_addr6
    }

    /// Member `i`'s namespace (for `ss`, or a process of a test's own).
    pub fn member_netns(&self, i: usize) -> &Netns {
        &self.members[i].netns
    }

    /// Member `i`'s client URL, `http://IP:2379`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(|i| self.endpoint(i)).collect()
    }

    /// The last lines of every member's log, for a failure's message.
    pub fn member_logs(&self) -> String {
        self.members.iter().map(Member::log_tail).collect()
    }

    /// `etcdctl ARGS` against every member, run from the switch (which no
    /// fault cuts off). A flag in `args` overrides the defaults
    /// `--dial-timeout=1s --command-timeout=3s`. A request goes to one
    /// member the client could connect to: with a member partitioned, that
    /// may be the one that cannot answer (`etcdctl_member` picks).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_in(&self.switch, &self.endpoints(), args)
    }

    /// `etcdctl ARGS` against member `i` alone, from the switch.
    pub fn etcdctl_member(&self, i: usize, args: &[&str]) -> Output {
        etcdctl_in(&self.switch, &[self.endpoint(i)], args)
    }

    /// `etcdctl ARGS` against every member, from host `i`'s namespace
    /// (where faults made by `isolate_host` apply).
    pub fn etcdctl_from_host(&self, i: usize, args: &[&str]) -> Output {
        etcdctl_in(&self.hosts[i], &self.endpoints(), args)
    }

    /// Like `etcdctl`, panicking with its output and the members' logs
    /// when it fails; returns its standard output.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let output = self.etcdctl(args);
        assert!(
            output.status.success(),
            "etcdctl {} failed: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.member_logs()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The cluster's current revision (from a linearizable read's header).
    pub fn revision(&self) -> i64 {
        let text = self.etcdctl_ok(&["get", "xknock-lab-probe", "-w", "json"]);
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("etcdctl get -w json gave {text:?}: {e}"));
        json["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no header.revision in {text}"))
    }

    /// Compacts the key-value history up to the current revision (and
    /// waits for the compaction to reach the backend); returns that
    /// revision.
    pub fn compact_to_latest(&self) -> i64 {
        let revision = self.revision();
        self.etcdctl_ok(&["compact", &revision.to_string(), "--physical"]);
        revision
    }

    /// A TCP listener on `port` in host `i`'s namespace (all addresses,
    /// IPv4 and IPv6), accepting until the lab drops.
    pub fn host_tcp_listener(&mut self, i: usize, port: u16) {
        let listener = self.hosts[i].within(move || {
            TcpListener::bind(("::", port))
                .unwrap_or_else(|e| panic!("bind a listener on port {port}: {e}"))
        });
        let accepting = listener
            .try_clone()
            .expect("clone the listener for its thread");
        let thread = thread::spawn(move || while accepting.accept().is_ok() {});
        self.acceptors.push(Acceptor {
            listener,
            thread: Some(thread),
        });
    }

    /// What a TCP connection from the client to host `i`'s `port` meets
    /// within a second.
    pub fn client_reach(&self, i: usize, port: u16) -> Reach {
        let addr = SocketAddr::new(self.host_addr(i).parse().expect("a host address"), port);
        self.client.tcp_connect(addr, Duration::from_secs(1))
    }

    /// Whether a TCP connection from the client to host `i`'s `port`
    /// opens within a second.
    pub fn client_connect(&self, i: usize, port: u16) -> bool {
        self.client_reach(i, port) == Reach::Open
    }
}

/// `etcdctl` (API 3) run in `netns` against `endpoints`, with short
/// timeouts that flags in `args` may override.
fn etcdctl_in(netns: &Netns, endpoints: &[String], args: &[&str]) -> Output {
    netns
        .command("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=1s", "--command-timeout=3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                drop(child.kill());
                drop(child.wait());
            }
        }
        // Each listener's thread ends before its namespace goes.
        self.acceptors.clear();
        // The namespaces go as the fields drop; then the directory.
    }
}
