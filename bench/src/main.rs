//! The benchmark (`cargo xtask bench` runs it after set-up): xknock measured
//! against its baselines in one run. Writes target/bench/report.md and
//! target/bench/chart.svg under the workspace.

mod conceal;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    maps::HashMap,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use knock_common::{
    Addr, Flow, FlowKey, Grant, Progress, SourceHorizon, SourceRule, ipv4_mapped, map_names,
};
use lab::{
    Lab, Netns,
    frames::{Frame, TCP_ACK, TCP_SYN},
};
use xknock::{
    config::{Config, KernelConfig, PortSpec},
    filter::{AttachMode, BASELINE_OBJECT, Filter, key_addr, monotonic_ns},
    knock,
};

const CLIENT: &str = "198.18.0.2";
const SERVER: &str = "198.18.0.1";
const CLIENT_V6: &str = "fd18::2";
const SERVER_V6: &str = "fd18::1";
const SECOND_NS: u64 = 1_000_000_000;
/// Keeps the measured paths on the filter alone: stopped packets are
/// dropped silently. `conceal` measures the answers on their own.
const SILENT: &str = "conceal = \"drop\"\n";
/// The first step of the bench's rule.
const FIRST_STEP_PORT: u16 = 7291;

/// Knobs for a quicker run (`XKNOCK_BENCH_QUICK=1`) while developing.
pub struct Effort {
    pub repeat: u32,
    pub trials: usize,
    /// Knock-to-connect measurements per knocker.
    pub tries: usize,
    /// Spoofed SYNs per flood trial.
    pub flood_frames: u32,
    /// Flood rounds, each flooding every receiver once: flood rates are
    /// noisier than test runs, so they get more.
    pub flood_rounds: usize,
}

pub struct OpenTimes {
    pub xknock: Stat,
    pub knockd: Stat,
}

impl Effort {
    pub fn from_env() -> Effort {
        if std::env::var_os("XKNOCK_BENCH_QUICK").is_some() {
            Effort {
                repeat: 100_000,
                trials: 3,
                tries: 5,
                flood_frames: 200_000,
                flood_rounds: 3,
            }
        } else {
            Effort {
                repeat: 1_000_000,
                trials: 7,
                tries: 25,
                flood_frames: 2_000_000,
                flood_rounds: 15,
            }
        }
    }
}

/// A median over trials with its spread.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// "median | min-max" table cells with `decimals` digits.
    fn cells(&self, decimals: usize) -> String {
        format!(
            "{:.d$} | {:.d$}-{:.d$}",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }

    fn of(mut samples: Vec<f64>) -> Stat {
        samples.sort_by(f64::total_cmp);
        Stat {
            median: samples[samples.len() / 2],
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// One rule; its hour-long timeouts outlast a run, so the progress and
/// grants the measured paths rely on never lapse midway.
fn bench_config(limits: &str) -> KernelConfig {
    let text = format!(
        "{limits}[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"1h\"\nopen_for = \"1h\"\nprotect = [\"tcp:22\"]\n"
    );
    let config = Config::parse(&text).expect("bench config is valid");
    KernelConfig::try_from(&config).expect("fits")
}

/// ns per packet of `frame`, `effort.trials` times `effort.repeat` runs.
fn cost(
    run: impl Fn(&[u8], u32) -> anyhow::Result<Duration>,
    frame: &[u8],
    effort: &Effort,
) -> anyhow::Result<Stat> {
    let samples = (0..effort.trials)
        .map(|_| ns_per_packet(&run, frame, effort))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Stat::of(samples))
}

/// ns per packet of `frame` over one trial of `effort.repeat` runs.
fn ns_per_packet(
    run: &dyn Fn(&[u8], u32) -> anyhow::Result<Duration>,
    frame: &[u8],
    effort: &Effort,
) -> anyhow::Result<f64> {
    Ok(run(frame, effort.repeat)?.as_secs_f64() * 1e9)
}

fn xknock_run(filter: &Filter) -> impl Fn(&[u8], u32) -> anyhow::Result<Duration> + '_ {
    |frame, repeat| Ok(filter.test_run(frame, repeat)?.duration)
}

fn baseline(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .context(name.to_owned())?
        .try_into()?;
    program.load()?;
    Ok(())
}

fn baseline_run<'a>(
    ebpf: &'a Ebpf,
    name: &'a str,
) -> impl Fn(&[u8], u32) -> anyhow::Result<Duration> + 'a {
    move |frame, repeat| {
        let program: &Xdp = ebpf.program(name).context(name.to_owned())?.try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(result.duration)
    }
}

fn tcp(src: &str, dst: &str, port: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(ip(src), ip(dst), port, flags).build().0
}

fn knock_frames(src: &str) -> Vec<Vec<u8>> {
    vec![
        tcp(src, SERVER, 7291, TCP_SYN),
        Frame::udp(ip(src), ip(SERVER), 4728).build().0,
        tcp(src, SERVER, 6742, TCP_SYN),
    ]
}

pub struct PathCost {
    pub path: &'static str,
    pub stat: Stat,
    /// Median over trials of the path's cost over XDP_PASS's, measured
    /// right before it.
    pub vs_pass: f64,
}

/// Per-packet cost of each path through xknock, and of XDP_PASS.
pub fn per_packet(effort: &Effort) -> anyhow::Result<(Stat, Vec<PathCost>)> {
    let mut baselines = Ebpf::load(BASELINE_OBJECT)?;
    baseline(&mut baselines, "xdp_pass")?;
    let plain = tcp(CLIENT, SERVER, 80, TCP_ACK);
    let pass_run = baseline_run(&baselines, "xdp_pass");

    let mut filter = Filter::load(&bench_config(SILENT))?;
    // A source whose slot a live client shares: it takes every lookup.
    let shares_slot = "198.18.0.8";
    plant_live_horizon(&mut filter, &key_addr(ip(shares_slot)))?;
    // A source with a grant and an admitted flow, for the paths that need one.
    let granted = "198.18.0.9";
    for frame in knock_frames(granted) {
        filter.test_run(&frame, 1)?;
    }
    let flow_syn = Frame {
        src_port: 40100,
        ..Frame::tcp(ip(granted), ip(SERVER), 22, TCP_SYN)
    };
    filter.test_run(&flow_syn.build().0, 1)?;
    let flow_ack = Frame {
        tcp_flags: TCP_ACK,
        ..flow_syn
    };
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    let mut tagged = Frame::tcp(ip(CLIENT), ip(SERVER), 80, TCP_ACK);
    tagged.vlan_tags = vec![0x88a8, 0x8100];

    let paths: Vec<(&'static str, Vec<u8>)> = vec![
        ("non-IP frame (ARP)", arp),
        ("unprotected TCP ACK", plain.clone()),
        ("unprotected TCP SYN", tcp(CLIENT, SERVER, 80, TCP_SYN)),
        (
            "knock step (repeated: a retransmit)",
            tcp("198.18.0.7", SERVER, 7291, TCP_SYN),
        ),
        (
            "SYN to protected port, no grant (drop)",
            tcp(CLIENT, SERVER, 22, TCP_SYN),
        ),
        (
            "same, source sharing a live client's slot",
            tcp(shares_slot, SERVER, 22, TCP_SYN),
        ),
        (
            "ACK to protected port with live grant",
            tcp(granted, SERVER, 22, TCP_ACK),
        ),
        ("packet of an admitted flow", flow_ack.build().0),
        (
            "unprotected TCP ACK over IPv6",
            tcp(CLIENT_V6, SERVER_V6, 80, TCP_ACK),
        ),
        ("unprotected TCP ACK, 802.1ad+802.1Q", tagged.build().0),
    ];
    // Each trial of a path runs right after one of XDP_PASS, and the ratio
    // is taken within the pair; the paths take turns, trial by trial, so a
    // slow spell of the machine spreads over all of them.
    let xknock = xknock_run(&filter);
    let mut pass_samples = Vec::new();
    let mut samples = vec![(Vec::new(), Vec::new()); paths.len()];
    for _ in 0..effort.trials {
        for ((_, frame), (costs, ratios)) in paths.iter().zip(&mut samples) {
            let pass = ns_per_packet(&pass_run, &plain, effort)?;
            let cost = ns_per_packet(&xknock, frame, effort)?;
            pass_samples.push(pass);
            costs.push(cost);
            ratios.push(cost / pass);
        }
    }
    let costs = paths
        .iter()
        .zip(samples)
        .map(|((path, _), (costs, ratios))| PathCost {
            path,
            stat: Stat::of(costs),
            vs_pass: Stat::of(ratios).median,
        })
        .collect();
    Ok((Stat::of(pass_samples), costs))
}

/// Fills PROGRESS (sources past their first step) and GRANTS with `n`
/// entries each, from distinct sources.
fn fill(filter: &mut Filter, n: u32) -> anyhow::Result<()> {
    let now = monotonic_ns();
    let ebpf = filter.ebpf_mut();
    let source = |i: u32| SourceRule {
        addr: ipv4_mapped((0x0a00_0000u32 + i).to_be_bytes()),
        rule: 0,
    };
    let mut progress: HashMap<_, SourceRule, Progress> = ebpf
        .map_mut(map_names::PROGRESS)
        .context("PROGRESS")?
        .try_into()?;
    for i in 0..n {
        progress.insert(
            &source(i),
            &Progress {
                started_ns: now,
                next_step: 2,
                _pad: 0,
            },
            0,
        )?;
    }
    let mut grants: HashMap<_, SourceRule, Grant> = ebpf
        .map_mut(map_names::GRANTS)
        .context("GRANTS")?
        .try_into()?;
    for i in 0..n {
        let key = SourceRule {
            rule: 0,
            ..source(i + n)
        };
        grants.insert(
            &key,
            &Grant {
                expires_ns: now + 3600 * SECOND_NS,
            },
            0,
        )?;
    }
    // Grants planted from here raise no horizon; the measured source's must be live.
    plant_live_horizon(filter, &source(n).addr)
}

/// Raises both of a source's horizons far into the future, as if it (or a
/// source sharing its slot) held every kind of state.
fn plant_live_horizon(filter: &mut Filter, addr: &Addr) -> anyhow::Result<()> {
    let (slot, _) = filter.source_horizon(addr)?;
    let live = SourceHorizon {
        knocking_until: u32::MAX / 2,
        admitted_until: u32::MAX / 2,
    };
    filter.set_source_horizon(slot, &live)?;
    Ok(())
}

pub struct ScaleRow {
    pub entries: u32,
    pub step: Stat,
    pub granted: Stat,
    pub miss: Stat,
}

/// Per-packet cost with 1, 10k and 1M entries in the progress and grant maps.
pub fn scale(effort: &Effort) -> anyhow::Result<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    for entries in [1u32, 10_000, 1_000_000] {
        let size = (entries * 2).max(1024);
        let limits = format!("[limits]\nprogress_entries = {size}\ngrant_entries = {size}\n");
        let mut filter = Filter::load(&bench_config(&format!("{SILENT}{limits}")))?;
        fill(&mut filter, entries)?;
        // Source 0 is two steps in (and repeats its second); source
        // `entries` has a grant.
        let mid = std::net::Ipv4Addr::from(0x0a00_0000u32).to_string();
        let granted = std::net::Ipv4Addr::from(0x0a00_0000u32 + entries).to_string();
        rows.push(ScaleRow {
            entries,
            step: cost(
                xknock_run(&filter),
                &Frame::udp(ip(&mid), ip(SERVER), 4728).build().0,
                effort,
            )?,
            granted: cost(
                xknock_run(&filter),
                &tcp(&granted, SERVER, 22, TCP_ACK),
                effort,
            )?,
            miss: cost(
                xknock_run(&filter),
                &tcp("198.18.0.77", SERVER, 80, TCP_SYN),
                effort,
            )?,
        });
    }
    Ok(rows)
}

/// Bytes the kernel charges for each map of a filter at the default sizes.
pub fn memory() -> anyhow::Result<BTreeMap<String, u64>> {
    let mut filter = Filter::load(&bench_config(""))?;
    let mut sizes = BTreeMap::new();
    for (name, map) in filter.ebpf_mut().maps() {
        let fd = map_fd(map)?;
        let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let memlock = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .context("no memlock in fdinfo")?
            .trim()
            .parse()?;
        sizes.insert(name.to_owned(), memlock);
    }
    Ok(sizes)
}

/// The fd behind a map, to read the kernel's fdinfo about it.
fn map_fd(map: &aya::maps::Map) -> anyhow::Result<i32> {
    let fd = match map {
        aya::maps::Map::Array(data)
        | aya::maps::Map::PerCpuArray(data)
        | aya::maps::Map::LruHashMap(data)
        | aya::maps::Map::LpmTrie(data)
        | aya::maps::Map::RingBuf(data)
        | aya::maps::Map::HashMap(data)
        | aya::maps::Map::ProgramArray(data) => data.fd().as_fd().as_raw_fd(),
        other => anyhow::bail!("unexpected map kind {other:?}"),
    };
    Ok(fd)
}

/// Milliseconds from the start of a knock to the first TCP connection to the
/// protected port, measured on the client: the knock is sent in-process, then
/// a connection is tried every 5 ms until one opens.
fn open_time(lab: &Lab) -> anyhow::Result<f64> {
    let server = ip(SERVER);
    lab.client.within(move || -> anyhow::Result<f64> {
        let steps: Vec<PortSpec> = ["tcp:7291", "udp:4728", "tcp:6742"]
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        let target = SocketAddr::new(server, 22);
        let start = Instant::now();
        knock::send_sequence(server, &steps, Duration::ZERO)?;
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_millis(5)) {
                Ok(_) => return Ok(start.elapsed().as_secs_f64() * 1e3),
                Err(error) if start.elapsed() > Duration::from_secs(5) => {
                    anyhow::bail!("port 22 did not open within 5 s: {error}")
                }
                Err(_) => {}
            }
        }
    })
}

/// Removes every entry of a hash map of `filter`.
fn clear<K: aya::Pod, V: aya::Pod>(filter: &mut Filter, name: &str) -> anyhow::Result<()> {
    let mut map: HashMap<_, K, V> = filter
        .ebpf_mut()
        .map_mut(name)
        .context(name.to_owned())?
        .try_into()?;
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for key in keys {
        map.remove(&key)?;
    }
    Ok(())
}

/// Time to open with xknock attached natively to the server's veth.
fn time_to_open_xknock(tries: usize) -> anyhow::Result<Stat> {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = bench_config("");
    let iface = lab.server_if.clone();
    // Attached from inside the server namespace, where the interface is.
    let mut filter = lab.server.within(move || -> anyhow::Result<Filter> {
        let mut filter = Filter::load(&config)?;
        filter.attach(&iface, AttachMode::Native)?;
        Ok(filter)
    })?;
    let mut samples = Vec::with_capacity(tries);
    for _ in 0..tries {
        samples.push(open_time(&lab)?);
        clear::<SourceRule, Grant>(&mut filter, map_names::GRANTS)?;
        clear::<FlowKey, Flow>(&mut filter, map_names::FLOWS)?;
    }
    Ok(Stat::of(samples))
}

/// Time to open with knockd and the iptables rule its documentation shows.
fn time_to_open_knockd(tries: usize) -> anyhow::Result<Stat> {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let dir = tempfile::tempdir()?;
    let iptables = |args: &[&str]| -> anyhow::Result<()> {
        let status = lab.server.command("iptables").args(args).status()?;
        ensure!(status.success(), "iptables {} failed", args.join(" "));
        Ok(())
    };
    iptables(&["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"])?;
    let conf = dir.path().join("knockd.conf");
    fs::write(
        &conf,
        format!(
            "[options]\n    logfile = {}\n\n[openSSH]\n    sequence = 7291:tcp,4728:udp,6742:tcp\n    \
             seq_timeout = 10\n    tcpflags = syn\n    \
             command = /usr/sbin/iptables -I INPUT 1 -s %IP% -p tcp --dport 22 -j ACCEPT\n",
            dir.path().join("knockd.log").display()
        ),
    )?;
    let mut knockd = lab
        .server
        .command("knockd")
        .arg("-c")
        .arg(&conf)
        .args(["-i", &lab.server_if])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting knockd")?;
    // knockd opens its capture asynchronously; give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    let mut samples = Vec::with_capacity(tries);
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..tries {
            samples.push(open_time(&lab)?);
            iptables(&[
                "-D", "INPUT", "-s", CLIENT, "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
            ])?;
        }
        Ok(())
    })();
    let _ = knockd.kill();
    let _ = knockd.wait();
    result?;
    Ok(Stat::of(samples))
}

/// What receives the flood on the server's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    Xknock,
    XknockAnswering,
    XdpDrop,
    XdpReadDrop,
    Nftables,
    NftablesConntrack,
    Iptables,
}

impl Receiver {
    /// The receivers of the main flood; concealment's answering flood runs
    /// in rounds of its own against XDP_DROP (`conceal`), so it cannot slow
    /// these.
    const ALL: [Receiver; 6] = [
        Receiver::Xknock,
        Receiver::XdpDrop,
        Receiver::XdpReadDrop,
        Receiver::Nftables,
        Receiver::NftablesConntrack,
        Receiver::Iptables,
    ];

    fn label(self) -> &'static str {
        match self {
            Receiver::Xknock => "xknock (XDP native, protected tcp:22)",
            Receiver::XknockAnswering => {
                "xknock with conceal = \"closed\", flood at the first knock port: every SYN answered with an RST"
            }
            Receiver::XdpDrop => "bare XDP_DROP program (the limit)",
            Receiver::XdpReadDrop => "XDP program that reads the port, then drops",
            Receiver::Nftables => "nftables input hook: tcp dport 22 drop",
            Receiver::NftablesConntrack => {
                "nftables input with conntrack (ct state established accept)"
            }
            Receiver::Iptables => "iptables -A INPUT -p tcp --dport 22 -j DROP",
        }
    }
}

/// A receiver in place: whatever must stay alive while it drops.
enum Installed {
    Filter(Filter),
    Program(#[expect(dead_code, reason = "held so the program stays attached")] Ebpf),
    Netfilter,
}

pub struct FloodRow {
    pub label: &'static str,
    /// Spoofed SYNs dropped per second.
    pub pps: Stat,
    /// The same, per round, in round order.
    pub rounds: Vec<f64>,
    /// Of the frames generated, the share the receiver counted.
    pub delivered: f64,
}

fn mac_of(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", iface]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC for {iface}"))?;
    let mut bytes = [0u8; 6];
    for (byte, hex) in bytes.iter_mut().zip(mac.split(':')) {
        *byte = u8::from_str_radix(hex, 16)?;
    }
    Ok(bytes)
}

/// The ones'-complement sum used by IPv4 and TCP, folded and inverted.
fn internet_checksum(chunks: &[&[u8]]) -> [u8; 2] {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// A TCP SYN to the server's `port` addressed to its veth MAC, with valid
/// checksums (the generator keeps them valid as it rewrites the source).
fn flood_template(lab: &Lab, port: u16) -> anyhow::Result<Vec<u8>> {
    let mut frame = tcp(CLIENT, SERVER, port, TCP_SYN);
    frame[0..6].copy_from_slice(&mac_of(&lab.server, &lab.server_if)?);
    frame[6..12].copy_from_slice(&mac_of(&lab.client, &lab.client_if)?);
    let ip_checksum = internet_checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&ip_checksum);
    let tcp_len = (frame.len() - 34) as u16;
    let pseudo = [&frame[26..34], &[0, 6], &tcp_len.to_be_bytes()[..]].concat();
    let tcp_checksum = internet_checksum(&[&pseudo, &frame[34..]]);
    frame[50..52].copy_from_slice(&tcp_checksum);
    Ok(frame)
}

/// Runs `command` with `args` in `ns`, failing with its stderr.
fn run_in(ns: &Netns, command: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = ns.command(command).args(args).output()?;
    ensure!(
        out.status.success(),
        "{command} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_ruleset(conntrack: bool) -> String {
    let established = if conntrack {
        "ct state established,related accept\n"
    } else {
        ""
    };
    format!(
        "table inet bench {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
         {established} tcp dport 22 counter drop\n }}\n}}\n"
    )
}

fn install(lab: &Lab, receiver: Receiver) -> anyhow::Result<Installed> {
    let iface = lab.server_if.clone();
    match receiver {
        Receiver::Xknock | Receiver::XknockAnswering => {
            let config = bench_config(if receiver == Receiver::Xknock {
                SILENT
            } else {
                ""
            });
            lab.server.within(move || -> anyhow::Result<Installed> {
                let mut filter = Filter::load(&config)?;
                filter.attach(&iface, AttachMode::Native)?;
                Ok(Installed::Filter(filter))
            })
        }
        Receiver::XdpDrop | Receiver::XdpReadDrop => lab.server.within(move || {
            let name = match receiver {
                Receiver::XdpDrop => "xdp_drop",
                _ => "xdp_read_drop",
            };
            let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
            baseline(&mut ebpf, name)?;
            let program: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
            let name = std::ffi::CString::new(iface)?;
            program.attach(name.as_c_str(), XdpMode::Driver)?;
            Ok(Installed::Program(ebpf))
        }),
        Receiver::Nftables | Receiver::NftablesConntrack | Receiver::Iptables => {
            // Without an XDP program, veth takes XDP frames only with GRO on.
            run_in(&lab.server, "ethtool", &["-K", &lab.server_if, "gro", "on"])?;
            match receiver {
                Receiver::Iptables => {
                    run_in(
                        &lab.server,
                        "iptables",
                        &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"],
                    )?;
                }
                _ => {
                    let rules = nft_ruleset(matches!(receiver, Receiver::NftablesConntrack));
                    let dir = tempfile::tempdir()?;
                    let path = dir.path().join("bench.nft");
                    fs::write(&path, rules)?;
                    run_in(&lab.server, "nft", &["-f", path.to_str().context("utf-8")?])?;
                }
            }
            Ok(Installed::Netfilter)
        }
    }
}

/// Moves the receiver's NAPI polling to a kernel thread of its own on CPU 1,
/// so the generator (pinned to CPU 0) does not share a core with it.
fn separate_cpus(lab: &Lab) -> anyhow::Result<()> {
    let threaded = format!("echo 1 > /sys/class/net/{}/threaded", lab.server_if);
    run_in(&lab.server, "sh", &["-c", &threaded])?;
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,comm"])
        .output()?;
    let prefix = format!("napi/{}-", lab.server_if);
    let pids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, comm) = l.trim().split_once(' ')?;
            comm.trim().starts_with(&prefix).then(|| pid.to_owned())
        })
        .collect();
    ensure!(!pids.is_empty(), "no NAPI thread for {}", lab.server_if);
    for pid in pids {
        let status = std::process::Command::new("taskset")
            .args(["-pc", "1", &pid])
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "taskset {pid}");
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Packets the receiver has dropped so far, by its own counters.
fn dropped(lab: &Lab, receiver: Receiver, installed: &Installed) -> anyhow::Result<u64> {
    match (receiver, installed) {
        (Receiver::Xknock, Installed::Filter(filter)) => Ok(filter.counters()?["drop_protected"]),
        // Answered or not, every packet that reached the answering program.
        (Receiver::XknockAnswering, Installed::Filter(filter)) => {
            Ok(filter.answers()?.values().sum())
        }
        (Receiver::XdpDrop | Receiver::XdpReadDrop, _) => {
            let stats = run_in(&lab.server, "ethtool", &["-S", &lab.server_if])?;
            stats
                .lines()
                .find_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_drops:"))
                .context("no xdp_drops statistic")?
                .trim()
                .parse()
                .map_err(Into::into)
        }
        (Receiver::Iptables, _) => {
            let listing = run_in(&lab.server, "iptables", &["-L", "INPUT", "-v", "-x", "-n"])?;
            let row = listing
                .lines()
                .find(|l| l.contains("dpt:22"))
                .context("no iptables rule")?;
            row.split_whitespace()
                .next()
                .context("no count")?
                .parse()
                .map_err(Into::into)
        }
        _ => {
            let listing = run_in(&lab.server, "nft", &["list", "table", "inet", "bench"])?;
            let counted = listing
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .context("no nft counter")?;
            counted.parse().map_err(Into::into)
        }
    }
}

/// Sends `frames` spoofed SYNs out of the client's veth with BPF_PROG_TEST_RUN
/// in live-frames mode; returns the seconds it took.
fn generate(
    lab: &Lab,
    generator: &'static str,
    template: Vec<u8>,
    frames: u32,
) -> anyhow::Result<f64> {
    let iface = lab.client_if.clone();
    lab.client.within(move || -> anyhow::Result<f64> {
        pin_to_cpu(0)?;
        let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
        baseline(&mut ebpf, generator)?;
        let frame: [u8; 54] = template
            .as_slice()
            .try_into()
            .context("a 54-byte template")?;
        let mut slot: aya::maps::Array<_, [u8; 54]> = ebpf
            .map_mut("FLOOD_TEMPLATE")
            .context("FLOOD_TEMPLATE")?
            .try_into()?;
        slot.set(0, &frame, 0)?;
        let program: &Xdp = ebpf.program(generator).context(generator)?.try_into()?;
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(index != 0, "no client interface");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&index.to_ne_bytes());
        let start = Instant::now();
        program.test_run(TestRunOptions {
            data_in: Some(&template),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })?;
        Ok(start.elapsed().as_secs_f64())
    })
}

/// Spoofed-SYN flood throughput of each receiver, in its own lab. The
/// trials take turns across receivers, so a slow spell of the machine hits
/// them all alike.
pub fn flood(effort: &Effort, receivers: &[Receiver]) -> anyhow::Result<Vec<FloodRow>> {
    struct Bench {
        receiver: Receiver,
        lab: Lab,
        installed: Installed,
        template: Vec<u8>,
        rates: Vec<f64>,
        counted: u64,
    }
    let mut benches = Vec::new();
    for &receiver in receivers {
        // Answers coming back end at the client's XDP_DROP, not its stack;
        // where nothing comes back the client runs no program, as before
        // concealment.
        let lab =
            Lab::with_client_program((receiver == Receiver::XknockAnswering).then_some("xdp_drop"));
        let installed = install(&lab, receiver)?;
        separate_cpus(&lab)?;
        let port = if receiver == Receiver::XknockAnswering {
            FIRST_STEP_PORT
        } else {
            22
        };
        let template = flood_template(&lab, port)?;
        benches.push(Bench {
            receiver,
            lab,
            installed,
            template,
            rates: Vec::new(),
            counted: 0,
        });
    }
    for _ in 0..effort.flood_rounds {
        for bench in &mut benches {
            let before = dropped(&bench.lab, bench.receiver, &bench.installed)?;
            let generator = if bench.receiver == Receiver::XknockAnswering {
                "xdp_flood_restoring"
            } else {
                "xdp_flood"
            };
            let seconds = generate(
                &bench.lab,
                generator,
                bench.template.clone(),
                effort.flood_frames,
            )?;
            // Let the receiver finish what is queued.
            std::thread::sleep(Duration::from_millis(200));
            let got = dropped(&bench.lab, bench.receiver, &bench.installed)? - before;
            bench.counted += got;
            bench.rates.push(got as f64 / seconds);
        }
    }
    let generated = f64::from(effort.flood_frames) * effort.flood_rounds as f64;
    Ok(benches
        .into_iter()
        .map(|bench| FloodRow {
            label: bench.receiver.label(),
            pps: Stat::of(bench.rates.clone()),
            rounds: bench.rates,
            delivered: bench.counted as f64 / generated,
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let effort = Effort::from_env();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&out)?;
    eprintln!(
        "bench: per-packet cost ({} trials x {} runs)",
        effort.trials, effort.repeat
    );
    // Test runs execute on the calling CPU: keep them all on one, so that
    // baselines and paths see the same core.
    let (pass, paths, scale) = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<_> {
                pin_to_cpu(1)?;
                let (pass, paths) = per_packet(&effort)?;
                eprintln!("bench: scale");
                Ok((pass, paths, scale(&effort)?))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the in-kernel cost thread panicked"))?
    })?;
    eprintln!("bench: building closed-port answers");
    let (answer_pass, answers) = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<_> {
                pin_to_cpu(1)?;
                conceal::answer_costs(&effort)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the answer cost thread panicked"))?
    })?;
    eprintln!("bench: memory");
    let memory = memory()?;
    eprintln!("bench: time to open ({} tries each)", effort.tries);
    let open = OpenTimes {
        xknock: time_to_open_xknock(effort.tries)?,
        knockd: time_to_open_knockd(effort.tries)?,
    };
    eprintln!(
        "bench: spoofed SYN flood ({} rounds x {} frames)",
        effort.flood_rounds, effort.flood_frames
    );
    let flood = flood(&effort, &Receiver::ALL)?;
    eprintln!("bench: answering flood at a knock port, against XDP_DROP");
    let answering = self::flood(&effort, &[Receiver::XknockAnswering, Receiver::XdpDrop])?;
    let mut report = render(&effort, pass, &paths, &scale, &memory, &open, &flood);
    conceal::render(&mut report, &effort, answer_pass, &answers, &answering);
    write(&out.join("report.md"), &report)?;
    write(&out.join("chart.svg"), &chart(pass, &paths))?;
    println!("{report}");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn render(
    effort: &Effort,
    pass: Stat,
    paths: &[PathCost],
    scale: &[ScaleRow],
    memory: &BTreeMap<String, u64>,
    open: &OpenTimes,
    flood: &[FloodRow],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# xknock benchmark\n\nMachine: {}.\nCommand: `cargo xtask bench`. Each figure is a median with its range: in-kernel costs over {} trials of {} runs, flood rates over {} rounds of {} frames.\n",
        machine(),
        effort.trials,
        effort.repeat,
        effort.flood_rounds,
        effort.flood_frames
    );
    let _ = writeln!(
        md,
        "## In-kernel cost per packet (BPF_PROG_TEST_RUN)\n\nThe paths take turns trial by trial, and every \
         trial of a path runs right after one of the XDP_PASS program, on the same CPU; \"vs XDP_PASS\" \
         is the median over trials of the ratio within each pair.\n"
    );
    cost_table(&mut md, pass, paths, 1);
    let _ = writeln!(md, "\n## Scale: entries in the progress and grant maps\n");
    let _ = writeln!(
        md,
        "| entries | step of a source mid-sequence | ACK with live grant | SYN from an unknown source |\n| ---: | ---: | ---: | ---: |"
    );
    for r in scale {
        let _ = writeln!(
            md,
            "| {} | {:.1} ns | {:.1} ns | {:.1} ns |",
            r.entries, r.step.median, r.granted.median, r.miss.median
        );
    }
    let _ = writeln!(
        md,
        "\n## Time to open: knock start to first TCP connect, same veth topology\n"
    );
    let _ = writeln!(
        md,
        "| server | median ms | range ms | tries |\n| --- | ---: | ---: | ---: |"
    );
    for (name, stat) in [
        ("xknock (XDP, native)", open.xknock),
        ("knockd + iptables", open.knockd),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} |", stat.cells(3), effort.tries);
    }
    let _ = writeln!(
        md,
        "\nknockd takes {:.0} times as long (medians).",
        open.knockd.median / open.xknock.median
    );
    let _ = writeln!(
        md,
        "\n## Spoofed SYN flood to the protected port (random sources, live-frames BPF_PROG_TEST_RUN over veth)\n"
    );
    let _ = writeln!(
        md,
        "The generator runs on CPU 0 and the receiving veth's NAPI thread on CPU 1. The rate is what the \
         receiver itself counted per second; \"frames counted\" is the share of generated frames it saw \
         (the rest overflowed veth's ring when the generator outran it). A round floods every receiver \
         once, back to back; ratios are medians over rounds of the ratio within a round, so a slow \
         spell of the machine does not favour one receiver.\n"
    );
    let _ = writeln!(
        md,
        "| receiver | dropped pkt/s (median) | range | vs XDP_DROP | frames counted |\n| --- | ---: | ---: | ---: | ---: |"
    );
    let row = |start: &str| flood.iter().find(|r| r.label.starts_with(start));
    // Median over rounds of a's rate over b's in the same round.
    let ratio = |a: Option<&FloodRow>, b: Option<&FloodRow>| match (a, b) {
        (Some(a), Some(b)) => round_ratio(a, b),
        _ => f64::NAN,
    };
    let limit = row("bare XDP_DROP");
    for receiver in flood {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} % |",
            receiver.label,
            receiver.pps.cells(0),
            ratio(Some(receiver), limit),
            receiver.delivered * 100.0
        );
    }
    let _ = writeln!(
        md,
        "\n## Targets\n\n| target | measured | met |\n| --- | ---: | :---: |"
    );
    let xknock = |baseline: &str| ratio(row("xknock"), row(baseline));
    let (vs_drop, vs_nft, vs_conntrack) = (
        xknock("bare XDP_DROP"),
        xknock("nftables input hook"),
        xknock("nftables input with"),
    );
    let unprotected = paths
        .iter()
        .find(|p| p.path == "unprotected TCP ACK")
        .map_or(f64::NAN, |p| p.vs_pass);
    let targets = [
        (
            "unprotected TCP costs at most 1.2x XDP_PASS",
            unprotected,
            unprotected <= 1.2,
        ),
        (
            "flood dropped at >= 0.9x the XDP_DROP rate",
            vs_drop,
            vs_drop >= 0.9,
        ),
        ("flood: >= 4.5x nftables input", vs_nft, vs_nft >= 4.5),
        (
            "flood: >= 7x nftables with conntrack",
            vs_conntrack,
            vs_conntrack >= 7.0,
        ),
        (
            "time to open under 1 ms (ms)",
            open.xknock.median,
            open.xknock.median < 1.0,
        ),
    ];
    for (target, measured, met) in targets {
        let _ = writeln!(
            md,
            "| {target} | {measured:.2} | {} |",
            if met { "yes" } else { "**no**" }
        );
    }
    let total: u64 = memory.values().sum();
    let _ = writeln!(
        md,
        "\n## Memory at the default sizes (kernel memlock)\n\n| map | bytes |\n| --- | ---: |"
    );
    for (name, bytes) in memory {
        let _ = writeln!(md, "| {name} | {bytes} |");
    }
    let _ = writeln!(
        md,
        "| **total** | **{total}** ({:.1} MiB) |",
        total as f64 / 1048576.0
    );
    md
}

/// The median over rounds of `a`'s rate over `b`'s in the same round.
fn round_ratio(a: &FloodRow, b: &FloodRow) -> f64 {
    let per_round = a.rounds.iter().zip(&b.rounds).map(|(a, b)| a / b);
    Stat::of(per_round.collect()).median
}

/// A table of per-packet costs under their XDP_PASS baseline.
fn cost_table(md: &mut String, pass: Stat, paths: &[PathCost], decimals: usize) {
    let _ = writeln!(
        md,
        "| path | ns/packet (median) | range | vs XDP_PASS |\n| --- | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        md,
        "| XDP_PASS program (baseline) | {} | 1.00 |",
        pass.cells(decimals)
    );
    for p in paths {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} |",
            p.path,
            p.stat.cells(decimals),
            p.vs_pass
        );
    }
}

fn chart(pass: Stat, paths: &[PathCost]) -> String {
    let rows: Vec<(&str, f64)> = std::iter::once(("XDP_PASS baseline", pass.median))
        .chain(paths.iter().map(|p| (p.path, p.stat.median)))
        .collect();
    let max = rows.iter().map(|r| r.1).fold(1.0, f64::max);
    let (bar_x, width, row_h) = (330.0, 360.0, 26.0);
    let height = 40.0 + row_h * rows.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-weight=\"bold\">xknock: in-kernel ns per packet (median)</text>\n"
    );
    for (i, (label, ns)) in rows.iter().enumerate() {
        let y = 34.0 + row_h * i as f64;
        let w = width * ns / max;
        let colour = if i == 0 { "#999" } else { "#3a7" };
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.0}\">{label}</text><rect x=\"{bar_x}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"18\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.0}\">{ns:.1}</text>",
            y + 13.0,
            bar_x + w + 4.0,
            y + 13.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
