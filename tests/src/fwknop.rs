//! The real fwknop 2.6.10 tools in the lab: the client (`fwknop`) makes
//! SPA packets or sends them, and the server (`fwknopd`) says what it thinks
//! of given packets, so that xknock's verdicts can be checked against it.
//!
//! What the tools do, found by running them (Debian fwknop-client and
//! fwknop-server 2.6.10):
//!
//! - `fwknop --test -B FILE` writes the packet's payload to FILE as one line
//!   of base64 (the `U2FsdGVkX1` prefix stripped, the HMAC appended) and a
//!   newline; it sends nothing and needs no `-D`. fwknopd refuses the payload
//!   with that newline ("Data is not an SPA message"), so it is cut here. A
//!   FILE it cannot write is reported on stderr only: the exit status is 0.
//! - The client writes `$HOME/.fwknoprc` (also for `--key-gen`) and
//!   `$HOME/.fwknop.run` unless given `--no-rc-file --no-save-args`, and
//!   fails without a HOME (`--no-home-dir` then wants `--rc-file` and `-E`).
//!   Every run here has both options and a HOME of its own.
//! - The client only speaks IPv4: `-a fd18::2` is an "Invalid allow IP",
//!   and `-D fd18::1` fails in getaddrinfo ("Address family for hostname not
//!   supported"), exit status 1. fwknopd's UDP server binds IPv4 only.
//! - `fwknopd --test` records no digest, so it never reports a replay
//!   (server/incoming_spa.c: `add_replay_cache` does nothing when
//!   `opts->test`). fwknopd here therefore runs without `--test` by default
//!   and with `FIREWALL_EXE /bin/true`: it believes every iptables command
//!   succeeds, changes no firewall, and does everything else for real,
//!   replay cache included. `FwknopdOptions::test_mode` runs `--test`
//!   instead.
//! - fwknopd adds a digest to its replay cache once a packet has passed its
//!   HMAC and decrypted, before it checks age, source and ports: a refused
//!   but authentic packet is a replay the next time.
//! - In the foreground with `-v -v` fwknopd logs to stderr only (no syslog),
//!   one "udp_server: Got UDP datagram (N bytes) from: IP" line as each
//!   datagram arrives, then what it made of it; it handles one datagram at a
//!   time. See `FwknopdVerdict` for the lines of each verdict.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Netns, lines::Lines, require_program};

/// The port fwknop sends to and fwknopd listens on by default.
pub const DEFAULT_SPA_PORT: u16 = 62201;

/// How long `judge` waits for fwknopd to receive a datagram.
const WAIT: Duration = Duration::from_secs(5);

/// What marks the end of fwknopd's lines about a packet: a datagram it
/// rejects at once ("Data is not a valid SPA message format"), remembering
/// nothing.
const SENTINEL: &[u8] = b".";

/// A Rijndael key and an HMAC key, base64 as fwknop's options and
/// access.conf take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwknopKeys {
    pub key_base64: String,
    /// Empty for packets without an HMAC.
    pub hmac_key_base64: String,
}

impl FwknopKeys {
    /// Fresh random keys from `fwknop --key-gen` (32 bytes for Rijndael, 64
    /// for HMAC-SHA256).
    pub fn generate() -> FwknopKeys {
        let home = tempfile::tempdir().expect("tempdir");
        let output =
            client_run(client_command(Command::new("fwknop"), home.path()).arg("--key-gen"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("fwknop --key-gen printed no {key}: {stdout}"))
        };
        FwknopKeys {
            key_base64: value("KEY_BASE64:"),
            hmac_key_base64: value("HMAC_KEY_BASE64:"),
        }
    }

    fn client_args(&self) -> Vec<&str> {
        let mut args = vec!["--key-base64-rijndael", self.key_base64.as_str()];
        if !self.hmac_key_base64.is_empty() {
            args.extend(["--key-base64-hmac", self.hmac_key_base64.as_str()]);
        }
        args
    }
}

/// `command` (fwknop, directly or through nsenter) with `home` as its HOME
/// and no rc or args file read or written.
fn client_command(mut command: Command, home: &Path) -> Command {
    command
        .env("HOME", home)
        .args(["--no-rc-file", "--no-save-args"])
        .stdin(Stdio::null());
    command
}

/// Runs the client to completion, panicking with its output when it fails.
fn client_run(command: &mut Command) -> Output {
    require_program("fwknop", "fwknop-client");
    let output = command.output().expect("run fwknop");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The payload of an SPA packet the real client makes with `keys` and
/// `args` (e.g. `["-A", "tcp/22", "-a", CLIENT_V4]`, or `-s`, `-f SECS`,
/// `--time-offset-minus 300s`), without sending it: one line of base64,
/// without the newline. Leaves no file behind.
pub fn client_packet(keys: &FwknopKeys, args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("spa");
    client_run(
        client_command(Command::new("fwknop"), home.path())
            .args(keys.client_args())
            .args(args)
            .arg("--test")
            .arg("-B")
            .arg(&file),
    );
    let text = fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("fwknop wrote no packet to {}: {e}", file.display()));
    let payload = text.strip_suffix('\n').unwrap_or(&text);
    assert!(
        !payload.is_empty() && !payload.contains(char::is_whitespace),
        "fwknop -B wrote more than one packet: {text:?}"
    );
    payload.to_owned()
}

/// Sends an SPA packet for real with the client, from inside `ns`: `args`
/// name the server (`-D SERVER_V4`, IPv4 only) and what to ask for; the
/// client sends one UDP datagram to port 62201 unless `-p` says otherwise.
pub fn client_send(ns: &Netns, keys: &FwknopKeys, args: &[&str]) {
    let home = tempfile::tempdir().expect("tempdir");
    client_run(
        client_command(ns.command("fwknop"), home.path())
            .args(keys.client_args())
            .args(args),
    );
}

/// How fwknopd is set up (its access.conf has one stanza, `SOURCE ANY`).
#[derive(Debug, Clone)]
pub struct FwknopdOptions {
    pub keys: FwknopKeys,
    /// OPEN_PORTS, e.g. "tcp/22" or "tcp/22, udp/53".
    pub open_ports: String,
    /// FW_ACCESS_TIMEOUT in seconds (for packets without `-f`).
    pub fw_access_timeout: u32,
    /// MAX_SPA_PACKET_AGE in seconds, in either direction.
    pub max_spa_packet_age: u32,
    /// REQUIRE_SOURCE_ADDRESS: refuse packets made with `-s` (0.0.0.0).
    pub require_source_address: bool,
    /// UDPSERV_PORT.
    pub port: u16,
    /// `fwknopd --test`: no firewall commands at all, but no replay
    /// detection either.
    pub test_mode: bool,
    /// More lines for the access.conf stanza (e.g. "MAX_FW_TIMEOUT 60").
    pub extra_access: Vec<String>,
    /// More lines for fwknopd.conf (e.g. "ENABLE_SPA_PACKET_AGING N;").
    pub extra_config: Vec<String>,
    /// Print fwknopd's log as it comes (see it with --nocapture).
    pub echo: bool,
}

impl FwknopdOptions {
    /// `keys`, tcp/22 open for 30 s, packets up to 120 s old (fwknopd's
    /// default), REQUIRE_SOURCE_ADDRESS Y, port 62201.
    pub fn new(keys: &FwknopKeys) -> FwknopdOptions {
        FwknopdOptions {
            keys: keys.clone(),
            open_ports: "tcp/22".to_owned(),
            fw_access_timeout: 30,
            max_spa_packet_age: 120,
            require_source_address: true,
            port: DEFAULT_SPA_PORT,
            test_mode: false,
            extra_access: Vec::new(),
            extra_config: Vec::new(),
            echo: false,
        }
    }
}

/// What fwknopd made of one packet, from the lines it logged about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwknopdVerdict {
    /// Access granted: "Added access rule to FWKNOP_INPUT for SRC -> DST
    /// PROTO/PORT, expires at UNIX_TIME" (one per port, see `last_grants`),
    /// or in test mode "--test mode enabled, skipping firewall manipulation."
    Accepted,
    /// "Replay detected from source IP: ..." (checked before decrypting).
    Replay,
    /// "Error creating fko context: Args contain invalid data:
    /// FKO_ERROR_INVALID_DATA_HMAC_COMPAREFAIL": any change to the payload,
    /// other keys, or no HMAC where the stanza has an HMAC key.
    BadHmac,
    /// "Error creating fko context: Decryption failed or decrypted data is
    /// invalid": the HMAC matched (or there is none) but the Rijndael key
    /// did not.
    DecryptionFailed,
    /// "SPA data time difference is too great (N seconds)": the timestamp
    /// is more than MAX_SPA_PACKET_AGE away from now, in the past or the
    /// future.
    TooOld,
    /// "Got 0.0.0.0 when valid source IP was required." (`-s` with
    /// REQUIRE_SOURCE_ADDRESS Y).
    SourceRequired,
    /// "One or more requested protocol/ports was denied per access.conf."
    NotAllowed,
    /// "preprocess_spa_data() returned error N: '...'": not taken for SPA
    /// data at all (too short or long, not base64, a trailing newline...).
    NotSpa,
    /// Anything else: fwknopd's lines about the packet.
    Other(String),
}

/// A firewall rule fwknopd would have added for an accepted packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwknopdGrant {
    /// The address let in: the one in the packet, or its source for `-s`.
    pub source: String,
    /// "tcp/22".
    pub access: String,
    /// Unix time at which fwknopd would remove the rule.
    pub expires_at: u64,
}

fn is_arrival(line: &str) -> bool {
    line.starts_with("udp_server: Got UDP datagram (")
}

/// fwknopd in its UDP server mode (no pcap) inside a namespace, with its
/// configuration, pid file and digest cache in a directory of its own.
/// Dropping it kills the process and removes the directory. Packets must
/// reach its socket: give it a namespace where no XDP filter (xknock) sits
/// in front of it, e.g. a second lab's server.
pub struct Fwknopd {
    child: Child,
    log: Lines,
    /// Where packets go: the server's address and UDPSERV_PORT.
    target: SocketAddr,
    /// Lines before this index are about packets already judged.
    cursor: usize,
    /// fwknopd's lines about the last packet judged.
    last: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Fwknopd {
    /// Starts fwknopd inside `ns`, which other namespaces reach at
    /// `address` (an IPv4 address), and waits until it listens.
    pub fn start(ns: &Netns, address: &str, options: FwknopdOptions) -> Fwknopd {
        require_program("fwknopd", "fwknop-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        let yes_no = |flag: bool| if flag { "Y" } else { "N" };
        let mut config = format!(
            "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT {};\nMAX_SPA_PACKET_AGE {};\n\
             FWKNOP_RUN_DIR {};\nFWKNOP_CONF_DIR {};\n\
             FIREWALL_EXE /bin/true;\nENABLE_IPT_COMMENT_CHECK N;\nLOCALE C;\n",
            options.port,
            options.max_spa_packet_age,
            dir.path().display(),
            dir.path().display(),
        );
        for line in &options.extra_config {
            config.push_str(line);
            config.push('\n');
        }
        let mut access = format!(
            "SOURCE ANY\nKEY_BASE64 {}\nOPEN_PORTS {}\nFW_ACCESS_TIMEOUT {}\n\
             REQUIRE_SOURCE_ADDRESS {}\n",
            options.keys.key_base64,
            options.open_ports,
            options.fw_access_timeout,
            yes_no(options.require_source_address),
        );
        if !options.keys.hmac_key_base64.is_empty() {
            access.push_str(&format!(
                "HMAC_KEY_BASE64 {}\n",
                options.keys.hmac_key_base64
            ));
        }
        for line in &options.extra_access {
            access.push_str(line);
            access.push('\n');
        }
        for (name, text) in [("fwknopd.conf", config), ("access.conf", access)] {
            fs::write(at(name), text).expect("write fwknopd configuration");
            // fwknopd warns about anything wider.
            fs::set_permissions(at(name), fs::Permissions::from_mode(0o600))
                .expect("chmod fwknopd configuration");
        }

        let mut command = ns.command("/usr/sbin/fwknopd");
        command
            .args(["--foreground", "-v", "-v", "--no-ipt-check-support"])
            .arg("--config-file")
            .arg(at("fwknopd.conf"))
            .arg("--access-file")
            .arg(at("access.conf"))
            .arg("--digest-file")
            .arg(at("digest.cache"))
            .arg("--pid-file")
            .arg(at("fwknopd.pid"));
        if options.test_mode {
            command.arg("--test");
        }
        // stdout only has the configuration dump (-v -v in the foreground).
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fwknopd");
        let log = Lines::default();
        log.follow(
            child.stderr.take().expect("stderr"),
            options.echo.then_some("  fwknopd| "),
        );
        let target = SocketAddr::new(address.parse().expect("an IPv4 address"), options.port);
        assert!(target.is_ipv4(), "fwknopd 2.6.10 only listens on IPv4");
        let mut fwknopd = Fwknopd {
            child,
            log,
            target,
            cursor: 0,
            last: Vec::new(),
            _dir: dir,
        };
        fwknopd.wait_listening();
        fwknopd
    }

    /// Waits until fwknopd's socket is bound (seen in /proc, so that no
    /// probe datagram muddles the log).
    fn wait_listening(&mut self) {
        let udp = format!("/proc/{}/net/udp", self.child.id());
        let local = format!(":{:04X}", self.target.port());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait fwknopd") {
                panic!(
                    "fwknopd exited at start ({status}): {:#?}",
                    self.log.snapshot()
                );
            }
            let bound = fs::read_to_string(&udp).is_ok_and(|table| {
                table.lines().skip(1).any(|row| {
                    row.split_whitespace()
                        .nth(1)
                        .is_some_and(|addr| addr.ends_with(&local))
                })
            });
            let started = self
                .log
                .snapshot()
                .iter()
                .any(|l| l.starts_with("Kicking off UDP server"));
            if bound && started {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fwknopd did not start listening: {:#?}",
                self.log.snapshot()
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.cursor = self.log.len();
    }

    /// Sends `payload` as one UDP datagram from `from` to fwknopd and
    /// returns what fwknopd made of it.
    pub fn judge(&mut self, payload: &[u8], from: &Netns) -> FwknopdVerdict {
        send(from, self.target, payload.to_vec());
        self.next_verdict(from)
    }

    /// What fwknopd made of the next datagram it receives, sent by someone
    /// else (`client_send`): waits up to 5 s for it to arrive, then sends
    /// a sentinel from `from` and takes every line before the sentinel's
    /// arrival. fwknopd handles one datagram at a time, so those lines are
    /// about that packet alone.
    pub fn next_verdict(&mut self, from: &Netns) -> FwknopdVerdict {
        let arrival = self
            .log
            .wait_index(self.cursor, WAIT, is_arrival)
            .unwrap_or_else(|| {
                panic!(
                    "fwknopd received no datagram within {WAIT:?}: {:#?}",
                    &self.log.snapshot()[self.cursor..]
                )
            });
        send(from, self.target, SENTINEL.to_vec());
        let end = self
            .log
            .wait_index(arrival + 1, WAIT, is_arrival)
            .unwrap_or_else(|| {
                panic!(
                    "fwknopd did not receive the sentinel after the packet: {:#?}",
                    &self.log.snapshot()[arrival..]
                )
            });
        let lines = self.log.snapshot();
        self.last = lines[arrival..end].to_vec();
        self.cursor = end + 1;
        verdict(&self.last)
    }

    /// fwknopd's lines about the last packet judged, starting with its
    /// "udp_server: Got UDP datagram" line.
    pub fn last_lines(&self) -> &[String] {
        &self.last
    }

    /// The firewall rules fwknopd would have added for the last packet
    /// judged (none in test mode).
    pub fn last_grants(&self) -> Vec<FwknopdGrant> {
        self.last.iter().filter_map(|l| grant(l)).collect()
    }

    /// Everything fwknopd logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.snapshot()
    }
}

impl Drop for Fwknopd {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// One UDP datagram from inside `from`.
fn send(from: &Netns, to: SocketAddr, payload: Vec<u8>) {
    from.within(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
        let sent = socket
            .send_to(&payload, to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
        assert_eq!(sent, payload.len(), "short send to {to}");
    });
}

/// The verdict in fwknopd's lines about one packet: the first line that
/// says one.
fn verdict(lines: &[String]) -> FwknopdVerdict {
    const PATTERNS: &[(&str, FwknopdVerdict)] = &[
        ("Replay detected from source IP", FwknopdVerdict::Replay),
        (
            "FKO_ERROR_INVALID_DATA_HMAC_COMPAREFAIL",
            FwknopdVerdict::BadHmac,
        ),
        (
            "Decryption failed or decrypted data is invalid",
            FwknopdVerdict::DecryptionFailed,
        ),
        (
            "SPA data time difference is too great",
            FwknopdVerdict::TooOld,
        ),
        (
            "Got 0.0.0.0 when valid source IP was required",
            FwknopdVerdict::SourceRequired,
        ),
        (
            "requested protocol/ports was denied per access.conf",
            FwknopdVerdict::NotAllowed,
        ),
        (
            "preprocess_spa_data() returned error",
            FwknopdVerdict::NotSpa,
        ),
        ("Added access rule to ", FwknopdVerdict::Accepted),
        (
            "--test mode enabled, skipping firewall manipulation",
            FwknopdVerdict::Accepted,
        ),
    ];
    lines
        .iter()
        // The payload itself, echoed at debug level, says nothing.
        .filter(|l| !l.starts_with("SPA Packet: '"))
        .find_map(|l| {
            PATTERNS
                .iter()
                .find(|(pattern, _)| l.contains(pattern))
                .map(|(_, verdict)| verdict.clone())
        })
        .unwrap_or_else(|| FwknopdVerdict::Other(lines.join("\n")))
}

/// "Added access rule to FWKNOP_INPUT for 198.18.0.2 -> 0.0.0.0/0 tcp/22,
/// expires at 1795601683"
fn grant(line: &str) -> Option<FwknopdGrant> {
    let rest = line.strip_prefix("Added access rule to ")?;
    let (_chain, rest) = rest.split_once(" for ")?;
    let (source, rest) = rest.split_once(" -> ")?;
    let (_destination, rest) = rest.split_once(' ')?;
    let (access, expires) = rest.split_once(", expires at ")?;
    Some(FwknopdGrant {
        source: source.to_owned(),
        access: access.to_owned(),
        expires_at: expires.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_grant_line() {
        assert_eq!(
            grant(
                "Added access rule to FWKNOP_INPUT for 198.18.0.2 -> 0.0.0.0/0 tcp/22, expires at 1795601683"
            ),
            Some(FwknopdGrant {
                source: "198.18.0.2".to_owned(),
                access: "tcp/22".to_owned(),
                expires_at: 1795601683,
            })
        );
        assert_eq!(
            grant("Added jump rule from chain: INPUT to chain: FWKNOP_INPUT"),
            None
        );
    }

    #[test]
    fn the_first_telling_line_decides() {
        let lines: Vec<String> = [
            "udp_server: Got UDP datagram (204 bytes) from: 198.18.0.2",
            "SPA Packet: 'Replay detected from source IP'",
            "[198.18.0.2] (stanza #1) SPA data time difference is too great (416 seconds).",
            "Added access rule to FWKNOP_INPUT for 1.2.3.4 -> 0.0.0.0/0 tcp/22, expires at 1",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(verdict(&lines), FwknopdVerdict::TooOld);
        assert!(matches!(verdict(&lines[..2]), FwknopdVerdict::Other(_)));
    }
}
