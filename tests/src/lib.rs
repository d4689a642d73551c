//! A lab of two hosts: network namespaces `server` and `client` joined by a
//! veth pair, with IPv4 and IPv6 addresses. Everything it creates has a name
//! unique to this process and is removed when the guard drops, also on panic.
//!
//! Traffic only ever goes between the two namespaces.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests and the lab show what they do on the test's output"
)]

use std::{
    env,
    fs::{self, File},
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod answers;
pub mod fleet_lab;
pub mod fleet_run;
pub mod flood;
pub mod frames;
pub mod fwknop;
mod lines;
pub mod model;
pub mod probing;
pub mod wire;
mod xknock_run;

pub use xknock_run::{TestFilter, Xknock, event_matches, held_sequences, xknock_in};

pub const SERVER_V4: &str = "198.18.0.1";
pub const CLIENT_V4: &str = "198.18.0.2";
pub const SERVER_V6: &str = "fd18::1";
pub const CLIENT_V6: &str = "fd18::2";

/// Panics with a clear message unless the process can do what the lab needs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests create network namespaces and attach XDP programs: run them as root (cargo xtask test)"
    );
}

/// Panics with a clear message unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) {
    let found = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is missing: install the Debian package {package} (cargo xtask setup does)"
    );
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The xknock binary under test: $XKNOCK_BIN, else the one next to this
/// test executable's target directory.
pub fn xknock_bin() -> PathBuf {
    if let Some(bin) = env::var_os("XKNOCK_BIN") {
        return PathBuf::from(bin);
    }
    let exe = env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/xknock
    let bin = exe
        .ancestors()
        .find(|dir| dir.join("xknock").is_file())
        .map(|dir| dir.join("xknock"));
    bin.unwrap_or_else(|| {
        panic!(
            "no xknock binary near {}: build it first (cargo xtask test does)",
            exe.display()
        )
    })
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, fit for interface names
/// (at most 15 bytes with a one-letter suffix).
pub(crate) fn unique_name() -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("xk{:05x}{:02x}", std::process::id() & 0xfffff, id & 0xff)
}

/// One network namespace, named under /var/run/netns.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs inside this namespace. Through nsenter, which
    /// changes the network namespace only: `ip netns exec` also remounts
    /// /sys, which hides the BPF filesystem and its pins.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// A command that runs inside this namespace with the namespace's own
    /// /sys mounted (`ip netns exec`), for what reads or writes an
    /// interface's sysfs files; it does not see the BPF filesystem.
    pub fn command_with_sysfs(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates belong to the namespace for their whole life.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; this thread alone changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// What a TCP connection from this namespace to `addr` meets within
    /// `timeout`.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Reach {
        self.within(move || reach(TcpStream::connect_timeout(&addr, timeout), addr))
    }

    /// `tcp_connect` from this namespace's address `from` (one of several).
    pub fn tcp_connect_from(&self, from: IpAddr, addr: SocketAddr, timeout: Duration) -> Reach {
        self.within(move || {
            let domain = socket2::Domain::for_address(addr);
            let socket =
                socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("a TCP socket");
            socket
                .bind(&SocketAddr::new(from, 0).into())
                .unwrap_or_else(|e| panic!("bind {from}: {e}"));
            reach(socket.connect_timeout(&addr.into(), timeout), addr)
        })
    }
}

/// What a connection attempt to `addr` met.
fn reach<T>(result: std::io::Result<T>, addr: SocketAddr) -> Reach {
    match result {
        Ok(_) => Reach::Open,
        Err(e) if e.kind() == ErrorKind::TimedOut => Reach::Silent,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reach::Refused,
        Err(e) => panic!("connect {addr}: {e}"),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace alive.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain signal delivery.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        drop(
            Command::new("ip")
                .args(["netns", "del", &self.name])
                .status(),
        );
    }
}

/// Two hosts joined by a veth pair.
pub struct Lab {
    pub server: Netns,
    pub client: Netns,
    /// The server's end of the veth pair, where xknock attaches.
    pub server_if: String,
    pub client_if: String,
    /// An XDP program on the client's end (XDP_PASS unless asked otherwise): frames a native XDP program
    /// sends back with XDP_TX (the benchmarks' reference programs) only
    /// reach a veth peer that runs XDP itself (turning GRO on was not
    /// enough on Linux 6.18). A real NIC needs nothing of the kind.
    _client_xdp: Option<aya::Ebpf>,
}

/// Loads `program` of the reference object onto `iface` of the namespace
/// the calling thread is in.
fn attach_reference(program: &str, iface: &str) -> aya::Ebpf {
    let mut ebpf =
        aya::Ebpf::load(xknock::loader::BASELINE_OBJECT).expect("load the reference object");
    let xdp: &mut aya::programs::Xdp = ebpf
        .program_mut(program)
        .unwrap_or_else(|| panic!("the reference object has no {program}"))
        .try_into()
        .expect("an XDP program");
    xdp.load().unwrap_or_else(|e| panic!("load {program}: {e}"));
    let name = std::ffi::CString::new(iface).expect("interface name");
    xdp.attach(name.as_c_str(), aya::programs::XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach {program} to {iface}: {e}"));
    ebpf
}

impl Lab {
    pub fn new() -> Lab {
        Lab::with_client_program(Some("xdp_pass"))
    }

    /// A lab whose client end runs `program` of the reference object
    /// (`xdp_drop` where answers should vanish cheaply), or nothing where
    /// no answer needs to arrive (the bench's floods).
    pub fn with_client_program(program: Option<&'static str>) -> Lab {
        require_root();
        require_program("ip", "iproute2");
        let base = unique_name();
        let server = Netns::create(format!("{base}-srv"));
        let client = Netns::create(format!("{base}-cli"));
        let server_if = format!("{base}s");
        let client_if = format!("{base}c");
        run(
            "ip",
            &[
                "link",
                "add",
                &server_if,
                "netns",
                &server.name,
                "type",
                "veth",
                "peer",
                "name",
                &client_if,
                "netns",
                &client.name,
            ],
        );
        for (ns, iface, v4, v6) in [
            (&server, &server_if, SERVER_V4, SERVER_V6),
            (&client, &client_if, CLIENT_V4, CLIENT_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", iface]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", iface, "nodad"]);
            ns.ip(&["link", "set", iface, "up"]);
        }
        let iface = client_if.clone();
        let _client_xdp =
            program.map(|program| client.within(move || attach_reference(program, &iface)));
        Lab {
            server,
            client,
            server_if,
            client_if,
            _client_xdp,
        }
    }

    /// Whether a TCP connection from the client to the server's `port` opens.
    pub fn tcp_connect(&self, server: &str, port: u16) -> Reach {
        let addr = SocketAddr::new(server.parse().expect("address"), port);
        self.client.tcp_connect(addr, Duration::from_millis(1500))
    }

    /// Whether a UDP datagram from the client to the server's `port` is answered.
    pub fn udp_exchange(&self, server: &str, port: u16) -> Reach {
        let addr = SocketAddr::new(server.parse().expect("address"), port);
        self.client.within(move || {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .expect("literal");
            let socket = UdpSocket::bind(bind).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_millis(1500)))
                .expect("timeout");
            // Connected, so an ICMP port unreachable comes back as a refusal.
            socket.connect(addr).expect("connect");
            socket.send(b"ping").expect("send");
            let mut buf = [0u8; 64];
            match socket.recv(&mut buf) {
                Ok(_) => Reach::Open,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Reach::Silent
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Reach::Refused,
                Err(e) => panic!("udp {addr}: {e}"),
            }
        })
    }

    /// A TCP listener on the server (all addresses, IPv4 and IPv6) that
    /// accepts until the lab goes away.
    pub fn tcp_listener(&self, port: u16) {
        let listener = self
            .server
            .within(move || std::net::TcpListener::bind(("::", port)).expect("bind listener"));
        thread::spawn(move || for _ in listener.incoming() {});
    }

    /// A UDP echo service on the server.
    pub fn udp_echo(&self, port: u16) {
        let socket = self
            .server
            .within(move || UdpSocket::bind(("::", port)).expect("bind udp"));
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                drop(socket.send_to(&buf[..n], from));
            }
        });
    }

    /// The XDP mode attached to the server's interface: "xdp" (native),
    /// "xdpgeneric", or None.
    pub fn attached_xdp(&self) -> Option<String> {
        let out = self
            .server
            .ip(&["-d", "link", "show", "dev", &self.server_if]);
        let text = String::from_utf8_lossy(&out.stdout);
        ["xdpgeneric", "xdp"]
            .into_iter()
            .find(|mode| text.split_whitespace().any(|word| word == *mode))
            .map(str::to_owned)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// What a connection attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Open,
    /// Nothing came back: dropped (what the filter must do).
    Silent,
    /// A RST or port unreachable came back.
    Refused,
}

/// A real OpenSSH server in the lab's server namespace, and a client key
/// that it accepts for root.
pub struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start(lab: &Lab) -> Sshd {
        require_program("sshd", "openssh-server");
        require_program("ssh", "openssh-client");
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        for key in ["host_key", "client_key"] {
            run(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    at(key).to_str().expect("utf-8"),
                ],
            );
        }
        fs::copy(at("client_key.pub"), at("authorized_keys")).expect("authorized_keys");
        let config = format!(
            "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            at("host_key").display(),
            at("authorized_keys").display(),
            at("sshd.pid").display()
        );
        fs::write(at("sshd_config"), config).expect("sshd_config");
        // sshd wants its privilege-separation directory.
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let child = lab
            .server
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(at("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sshd");
        let sshd = Sshd { child, dir };
        // Ready once it listens (checked before any filter is attached).
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.tcp_connect(SERVER_V4, 22) != Reach::Open {
            assert!(Instant::now() < deadline, "sshd did not start listening");
            thread::sleep(Duration::from_millis(100));
        }
        sshd
    }

    /// The ssh client command for running `remote` as root on `server`.
    pub fn ssh(&self, lab: &Lab, server: &str, remote: &str) -> Command {
        self.ssh_from(lab, None, server, remote)
    }

    /// `ssh`, from the client's address `bind` (`ssh -b`) if given.
    pub fn ssh_from(&self, lab: &Lab, bind: Option<&str>, server: &str, remote: &str) -> Command {
        let mut command = lab.client.command("ssh");
        if let Some(bind) = bind {
            command.args(["-b", bind]);
        }
        command
            .arg("-i")
            .arg(self.key())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "ConnectionAttempts=1",
            ])
            .arg(format!("root@{server}"))
            .arg(remote)
            .stdin(Stdio::null());
        command
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// Whether `output` is ssh refused as at a port where nothing listens
/// (what xknock answers for a source without a grant).
pub fn ssh_refused(output: &Output) -> bool {
    !output.status.success()
        && String::from_utf8_lossy(&output.stderr).contains("Connection refused")
}

/// The 2007 article's knock, as `xknock knock` steps.
pub const ARTICLE_STEPS: [&str; 3] = ["tcp:3721", "udp:4728", "tcp:6742"];

/// A TOML rule for tests: the article's sequence protecting `protect`.
pub fn article_config(open_for: &str, protect: &str) -> String {
    let sequence: Vec<String> = ARTICLE_STEPS.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[rule]]\nname = \"ssh\"\nsequence = [{}]\n\
         sequence_timeout = \"5s\"\nopen_for = \"{open_for}\"\nprotect = [{protect}]\n",
        sequence.join(", ")
    )
}

/// `host` in the form `xknock knock` takes (IPv6 in brackets).
pub fn knock_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The article's knock from the client to `server` (its IPv4 or IPv6 address).
pub fn article_knock(lab: &Lab, server: &str) {
    let host = knock_host(server);
    let mut args = vec![host.as_str()];
    args.extend(ARTICLE_STEPS);
    knock(lab, &args);
}

/// Which lines of a one-time sequences file are marked used (`#`).
pub fn used_lines(path: &std::path::Path) -> Vec<bool> {
    fs::read_to_string(path)
        .expect("read sequences")
        .lines()
        .map(|l| l.starts_with('#'))
        .collect()
}

/// The "verdicts:" line xknock prints when it stops, from its log.
pub fn verdicts(log: &[String]) -> Option<&str> {
    log.iter()
        .find(|l| l.contains("verdicts:"))
        .map(String::as_str)
}

/// Runs `xknock knock` from the client namespace.
pub fn knock(lab: &Lab, args: &[&str]) -> Output {
    knock_with_state(lab, None, args)
}

/// Runs `xknock knock` from the client namespace, keeping what the client
/// remembers (of rotating windows it sent) in `state` if given.
pub fn knock_with_state(lab: &Lab, state: Option<&std::path::Path>, args: &[&str]) -> Output {
    knock_in(&lab.client, state, args)
}

/// Runs `xknock knock ARGS` from `netns` (the client of any lab), keeping
/// what the client remembers in `state` if given; panics when it fails.
pub fn knock_in(netns: &Netns, state: Option<&std::path::Path>, args: &[&str]) -> Output {
    let mut command = netns.command(xknock_bin());
    if let Some(state) = state {
        command.env("XDG_STATE_HOME", state);
    }
    let output = command
        .arg("knock")
        .args(args)
        .output()
        .expect("run xknock knock");
    assert!(
        output.status.success(),
        "xknock knock failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
