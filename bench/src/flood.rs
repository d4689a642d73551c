//! Spoofed-SYN floods over veth: xknock against XDP_DROP, a port-reading
//! XDP program, nftables and iptables, counted by each receiver; and
//! xknock steering a flood to the host's closed port against the host's
//! own closed port, both counted by the RSTs the kernel sent.

use aya::sys::{Stats, enable_stats};
use lab::wire::mac_of;

use super::*;

/// What receives the flood on the server's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Receiver {
    Xknock,
    /// xknock (`conceal = "closed"`) flooded at the first step's port:
    /// every SYN steered to the host's closed port and answered there.
    XknockAnswering,
    /// xknock (`conceal = "closed"`) flooded at the protected port: every
    /// SYN steered and answered, with no knock step to count.
    XknockAnsweringProtected,
    /// No xknock: the host's own closed port answers the flood, the
    /// reference for `XknockAnswering`.
    ClosedPort,
    /// The host's own closed port behind a bare XDP_PASS program: the
    /// reference that takes veth's XDP path, as xknock does.
    ClosedPortBehindXdpPass,
    /// xknock with an `[[spa]]` entry, flooded at its port with junk.
    XknockSpa,
    /// xknock (`conceal = "drop"`) flooded at the first step's port: every
    /// spoofed SYN is a first knock step from a new source, into a
    /// `FIRST_STEPS` of the default size.
    XknockKnockPort,
    /// The same into a `FIRST_STEPS` of `SMALL_FIRST_STEPS` records, small
    /// enough to stay in cache.
    XknockKnockPortSmall,
    XdpDrop,
    XdpReadDrop,
    Nftables,
    NftablesConntrack,
    /// nftables dropping the first knock step's port, for the flood there.
    NftablesKnockPort,
    Iptables,
}

impl Receiver {
    /// The receivers of the main flood; concealment's answering flood runs
    /// in rounds of its own against the host's closed port (`conceal`), so
    /// it cannot slow these.
    pub(crate) const ALL: [Receiver; 6] = [
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
                "xknock (conceal = \"closed\"), flood at the first knock port: every SYN steered to the host's closed port, its RST restored on egress"
            }
            Receiver::XknockAnsweringProtected => {
                "xknock (conceal = \"closed\"), flood at the protected port: every SYN steered, no knock step"
            }
            Receiver::ClosedPort => {
                "the host's own closed port, no xknock: every SYN answered with an RST"
            }
            Receiver::ClosedPortBehindXdpPass => {
                "the host's own closed port behind a bare XDP_PASS program: every SYN answered with an RST"
            }
            Receiver::XknockSpa => {
                "xknock, junk at the SPA port: copied up to the per-CPU rate, the rest shed"
            }
            Receiver::XknockKnockPort => {
                "xknock (conceal = \"drop\"), flood at the first knock port: every SYN a first step, FIRST_STEPS of 1048576 records (the default, 8 MiB)"
            }
            Receiver::XknockKnockPortSmall => {
                "xknock (conceal = \"drop\"), flood at the first knock port: every SYN a first step, FIRST_STEPS of 65536 records (512 KiB)"
            }
            Receiver::XdpDrop => "bare XDP_DROP program (the limit)",
            Receiver::XdpReadDrop => "XDP program that reads the port, then drops",
            Receiver::Nftables => "nftables input hook: tcp dport 22 drop",
            Receiver::NftablesConntrack => {
                "nftables input with conntrack (ct state established accept)"
            }
            Receiver::NftablesKnockPort => "nftables input hook: tcp dport 7291 drop",
            Receiver::Iptables => "iptables -A INPUT -p tcp --dport 22 -j DROP",
        }
    }

    /// The port its flood is aimed at.
    fn port(self) -> u16 {
        match self {
            Receiver::XknockAnswering
            | Receiver::ClosedPort
            | Receiver::ClosedPortBehindXdpPass
            | Receiver::XknockKnockPort
            | Receiver::XknockKnockPortSmall
            | Receiver::NftablesKnockPort => FIRST_STEP_PORT,
            _ => 22,
        }
    }

    /// Whether the host's stack answers its flood: counted by the RSTs
    /// sent, and the answers need a way back.
    fn answers(self) -> bool {
        matches!(
            self,
            Receiver::XknockAnswering
                | Receiver::XknockAnsweringProtected
                | Receiver::ClosedPort
                | Receiver::ClosedPortBehindXdpPass
        )
    }
}

/// Records of the smaller `FIRST_STEPS` the first-step floods and costs
/// are measured with beside the default's: 512 KiB, which stays in cache.
pub(crate) const SMALL_FIRST_STEPS: u32 = 65_536;

/// The bench's configuration (`conceal = "drop"`) with a `FIRST_STEPS` of
/// `SMALL_FIRST_STEPS` records.
pub(crate) fn small_first_steps_config() -> KernelConfig {
    bench_config(&format!(
        "{SILENT}[limits]\nfirst_step_entries = {SMALL_FIRST_STEPS}\n"
    ))
}

/// The row of `receiver`, if it was flooded.
pub(crate) fn row_for(rows: &[FloodRow], receiver: Receiver) -> Option<&FloodRow> {
    rows.iter().find(|r| r.receiver == receiver)
}

/// A receiver in place: whatever must stay alive while it drops.
pub(crate) enum Installed {
    Filter(Filter),
    /// A baseline program, attached while this is held.
    Program(Ebpf),
    Netfilter,
    /// Nothing but the host's stack.
    Stack,
}

pub(crate) struct FloodRow {
    pub receiver: Receiver,
    pub label: &'static str,
    /// Spoofed SYNs dropped per second.
    pub pps: Stat,
    /// The same, per round, in round order.
    pub rounds: Vec<f64>,
    /// Of the frames generated, the share the receiver counted.
    pub delivered: f64,
    /// xknock's concealment counters after its rounds (`ANSWERS`); empty
    /// for the other receivers.
    pub answers: BTreeMap<&'static str, u64>,
    /// For a receiver the host answers through, each BPF program's ns per
    /// run in one more round (`program_costs`); empty for the others.
    pub programs: Vec<(&'static str, f64)>,
}

/// Total run time and runs of each BPF program a receiver put on the
/// server, by the kernel's run-time statistics.
fn program_stats(installed: &Installed) -> anyhow::Result<Vec<(&'static str, (Duration, u64))>> {
    Ok(match installed {
        Installed::Filter(filter) => vec![
            (
                "xknock's filter, with the programs it tail-calls (per SYN)",
                filter.run_stats()?,
            ),
            (
                "xknock's egress program (per packet the host sent)",
                filter.restore_run_stats()?,
            ),
        ],
        Installed::Program(ebpf) => ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                let label: &'static str = match name {
                    "xdp_pass" => "XDP_PASS (per SYN)",
                    "xdp_drop" => "XDP_DROP (per SYN)",
                    _ => return None,
                };
                Some((label, (info.run_time(), info.run_count())))
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// Each of the receiver's BPF programs' ns per run over one more round of
/// `frames` (`generate`), with the kernel's run-time statistics on for it
/// alone, so they cost the timed rounds nothing. Each figure carries the
/// statistics' own two clock reads.
fn program_costs(
    lab: &Lab,
    installed: &Installed,
    generator: &'static str,
    template: Vec<u8>,
    frames: u32,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let _stats = enable_stats(Stats::RunTime)?;
    let before = program_stats(installed)?;
    generate(lab, generator, template, frames)?;
    std::thread::sleep(Duration::from_millis(200));
    let after = program_stats(installed)?;
    Ok(before
        .into_iter()
        .zip(after)
        .filter_map(|((label, (time, runs)), (_, (time_after, runs_after)))| {
            let runs = runs_after.checked_sub(runs).filter(|&runs| runs > 0)?;
            let ns = (time_after.saturating_sub(time)).as_secs_f64() * 1e9 / runs as f64;
            Some((label, ns))
        })
        .collect())
}

/// A TCP SYN to the server's `port` addressed to its veth MAC, with valid
/// checksums (the generator keeps them valid as it rewrites the source).
pub(crate) fn flood_template(lab: &Lab, port: u16) -> Vec<u8> {
    flood_template_on(lab, (&lab.server_if, &lab.client_if), port)
}

/// `flood_template` for a veth pair of the lab's other than its own:
/// `link` names the server's end and the client's.
pub(crate) fn flood_template_on(lab: &Lab, link: (&str, &str), port: u16) -> Vec<u8> {
    let syn = Frame {
        checksums: true,
        ..Frame::tcp(ip(CLIENT), ip(SERVER), port, TCP_SYN)
    };
    let mut frame = syn.build().0;
    frame[0..6].copy_from_slice(&mac_of(&lab.server, link.0));
    frame[6..12].copy_from_slice(&mac_of(&lab.client, link.1));
    frame
}

pub(crate) fn nft_ruleset(conntrack: bool, port: u16) -> String {
    let established = if conntrack {
        "ct state established,related accept\n"
    } else {
        ""
    };
    format!(
        "table inet bench {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
         {established} tcp dport {port} counter drop\n }}\n}}\n"
    )
}

/// A way back for the RSTs to the flood's random sources: a default route
/// through the client, whose MAC the server knows for good (the client's
/// XDP_DROP would drop its ARP replies, and a resolving neighbour holds the
/// answers back before TC egress sees them).
fn route_answers(lab: &Lab) -> anyhow::Result<()> {
    let mac = mac_of(&lab.client, &lab.client_if)
        .map(|b| format!("{b:02x}"))
        .join(":");
    let iface = lab.server_if.as_str();
    run_in(
        &lab.server,
        "ip",
        &[
            "neigh",
            "replace",
            CLIENT,
            "lladdr",
            &mac,
            "dev",
            iface,
            "nud",
            "permanent",
        ],
    )?;
    run_in(
        &lab.server,
        "ip",
        &["route", "replace", "default", "via", CLIENT, "dev", iface],
    )?;
    Ok(())
}

pub(crate) fn install(lab: &Lab, receiver: Receiver) -> anyhow::Result<Installed> {
    let iface = lab.server_if.clone();
    if receiver.answers() {
        route_answers(lab)?;
    }
    match receiver {
        Receiver::Xknock
        | Receiver::XknockAnswering
        | Receiver::XknockAnsweringProtected
        | Receiver::XknockSpa
        | Receiver::XknockKnockPort
        | Receiver::XknockKnockPortSmall => {
            let config = match receiver {
                Receiver::Xknock | Receiver::XknockKnockPort => bench_config(SILENT),
                Receiver::XknockKnockPortSmall => small_first_steps_config(),
                Receiver::XknockSpa => KernelConfig::try_from(&spa::spa_config()?)?,
                _ => bench_config(""),
            };
            lab.server.within(move || -> anyhow::Result<Installed> {
                let mut filter = Filter::load(&config)?;
                filter.attach(&iface, AttachMode::Native)?;
                Ok(Installed::Filter(filter))
            })
        }
        Receiver::XdpDrop | Receiver::XdpReadDrop | Receiver::ClosedPortBehindXdpPass => {
            lab.server.within(move || {
                let name = match receiver {
                    Receiver::XdpDrop => "xdp_drop",
                    Receiver::ClosedPortBehindXdpPass => "xdp_pass",
                    _ => "xdp_read_drop",
                };
                let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
                baseline(&mut ebpf, name)?;
                let program: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
                let name = std::ffi::CString::new(iface)?;
                program.attach(name.as_c_str(), XdpMode::Driver)?;
                Ok(Installed::Program(ebpf))
            })
        }
        Receiver::ClosedPort => {
            // Without an XDP program, veth takes XDP frames only with GRO on.
            run_in(&lab.server, "ethtool", &["-K", &lab.server_if, "gro", "on"])?;
            Ok(Installed::Stack)
        }
        Receiver::Nftables
        | Receiver::NftablesConntrack
        | Receiver::NftablesKnockPort
        | Receiver::Iptables => {
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
                    let conntrack = receiver == Receiver::NftablesConntrack;
                    let rules = nft_ruleset(conntrack, receiver.port());
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
pub(crate) fn separate_cpus(lab: &Lab) -> anyhow::Result<()> {
    separate_cpus_of(&lab.server, &lab.server_if)
}

/// `separate_cpus` for `iface` of `server`.
pub(crate) fn separate_cpus_of(server: &Netns, iface: &str) -> anyhow::Result<()> {
    let threaded = format!("echo 1 > /sys/class/net/{iface}/threaded");
    let out = server
        .command_with_sysfs("sh")
        .args(["-c", &threaded])
        .output()?;
    ensure!(
        out.status.success(),
        "{threaded}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,comm"])
        .output()?;
    let prefix = format!("napi/{iface}-");
    let pids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let (pid, comm) = l.trim().split_once(' ')?;
            comm.trim().starts_with(&prefix).then(|| pid.to_owned())
        })
        .collect();
    ensure!(!pids.is_empty(), "no NAPI thread for {iface}");
    for pid in pids {
        let status = std::process::Command::new("taskset")
            .args(["-pc", "1", &pid])
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "taskset {pid}");
    }
    Ok(())
}

/// The TCP RSTs the server's kernel has sent so far (`OutRsts` of
/// `/proc/net/snmp` in its namespace).
fn out_rsts(lab: &Lab) -> anyhow::Result<u64> {
    let snmp = run_in(&lab.server, "cat", &["/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp:")?,
        tcp.next().context("no Tcp: values")?,
    );
    let at = names
        .split_whitespace()
        .position(|name| name == "OutRsts")
        .context("no OutRsts")?;
    values
        .split_whitespace()
        .nth(at)
        .context("no OutRsts value")?
        .parse()
        .map_err(Into::into)
}

/// Packets the receiver has dropped so far, by its own counters; for a
/// receiver whose host answers, the RSTs its kernel sent, so xknock's
/// steering and the plain closed port are counted alike.
pub(crate) fn dropped(lab: &Lab, receiver: Receiver, installed: &Installed) -> anyhow::Result<u64> {
    if receiver.answers() {
        return out_rsts(lab);
    }
    match (receiver, installed) {
        (Receiver::Xknock, Installed::Filter(filter)) => {
            Ok(filter.maps().counters()?["drop_protected"])
        }
        (Receiver::XknockSpa, Installed::Filter(filter)) => {
            let counters = filter.maps().counters()?;
            Ok(
                counters["drop_spa_copied"]
                    + counters["drop_spa_shed"]
                    + counters["drop_spa_unfit"],
            )
        }
        // Every verdict that stopped a packet: first steps, and the few
        // repeated sources' duplicates or resets.
        (Receiver::XknockKnockPort | Receiver::XknockKnockPortSmall, Installed::Filter(filter)) => {
            stopped(filter)
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
pub(crate) fn generate(
    lab: &Lab,
    generator: &'static str,
    template: Vec<u8>,
    frames: u32,
) -> anyhow::Result<f64> {
    with_generator(
        &lab.client,
        lab.client_if.clone(),
        generator,
        template,
        move |send| {
            let start = Instant::now();
            send(frames)?;
            Ok(start.elapsed().as_secs_f64())
        },
    )
}

/// Spoofed-SYN flood throughput of each receiver, in its own lab. The
/// trials take turns across receivers, so a slow spell of the machine hits
/// them all alike.
pub(crate) fn flood(effort: &Effort, receivers: &[Receiver]) -> anyhow::Result<Vec<FloodRow>> {
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
        let lab = Lab::with_client_program(receiver.answers().then_some("xdp_drop"));
        let installed = install(&lab, receiver)?;
        separate_cpus(&lab)?;
        let template = if receiver == Receiver::XknockSpa {
            spa::junk_template(&lab)
        } else {
            flood_template(&lab, receiver.port())
        };
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
            let generator = if bench.receiver.answers() {
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
    benches
        .into_iter()
        .map(|bench| {
            let programs = if bench.receiver.answers() {
                program_costs(
                    &bench.lab,
                    &bench.installed,
                    "xdp_flood_restoring",
                    bench.template.clone(),
                    effort.flood_frames,
                )?
            } else {
                Vec::new()
            };
            let answers = match &bench.installed {
                Installed::Filter(filter) => filter.maps().answers()?,
                _ => BTreeMap::new(),
            };
            Ok(FloodRow {
                receiver: bench.receiver,
                label: bench.receiver.label(),
                pps: Stat::of(bench.rates.clone()),
                rounds: bench.rates,
                delivered: bench.counted as f64 / generated,
                answers,
                programs,
            })
        })
        .collect()
}

/// Packets `filter` stopped, by every `drop_*` verdict it counted.
pub(crate) fn stopped(filter: &Filter) -> anyhow::Result<u64> {
    Ok(filter
        .maps()
        .counters()?
        .iter()
        .filter(|(name, _)| name.starts_with("drop_"))
        .map(|(_, count)| count)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_rows_name_their_table_size() {
        let default = first_step_records(bench_config(SILENT).first_step_entries);
        let small = first_step_records(small_first_steps_config().first_step_entries);
        assert_eq!(small, SMALL_FIRST_STEPS);
        for (receiver, records) in [
            (Receiver::XknockKnockPort, default),
            (Receiver::XknockKnockPortSmall, small),
        ] {
            let label = receiver.label();
            assert!(label.contains(&format!(" {records} records")), "{label}");
        }
    }
}
