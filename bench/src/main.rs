//! The benchmark (`cargo xtask bench` runs it after set-up): xknock measured
//! against its baselines in one run. Writes target/bench/report.md and
//! target/bench/chart.svg under the workspace.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the bench's report is what it prints"
)]

mod conceal;
mod first_steps;
mod fleet;
mod flood;
mod kernel;
mod open;
mod report;
mod rotating;
mod scopes;
mod spa;
mod survival;
mod trace;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use flood::*;
use kernel::*;
use knock_common::{
    Addr, Grant, GrantKey, Progress, SourceHorizon, SourceRule, addr_words, ipv4_mapped,
};
use lab::{
    Lab, Netns,
    flood::{pin_to_cpu, with_generator},
    frames::{Frame, TCP_ACK, TCP_SYN},
};
use open::*;
use report::*;
use xknock::{
    client::knock,
    config::{Config, KernelConfig, PortSpec},
    loader::{AttachMode, BASELINE_OBJECT, Filter, key_addr, monotonic_ns},
};

const CLIENT: &str = "198.18.0.2";
const SERVER: &str = "198.18.0.1";
const CLIENT_V6: &str = "fd18::2";
const SERVER_V6: &str = "fd18::1";
const SECOND_NS: u64 = 1_000_000_000;
/// Keeps the measured paths on the filter alone: stopped packets are
/// dropped silently. `conceal` measures the answers on their own.
const SILENT: &str = "conceal = \"drop\"\n";
/// Grants and revokes timed each way across the fleet (the issue asks for
/// the 99th percentile over 100).
const FLEET_TRIES: usize = 100;
/// The first step of the bench's rule.
const FIRST_STEP_PORT: u16 = 7291;
/// The flood at the first knock port (into a `FIRST_STEPS` of the default
/// size and into a small one) and what it is compared with in the same
/// rounds: xknock's flood at the protected port, the XDP_DROP limit, and
/// nftables dropping the first knock port.
const KNOCK_FLOOD: [Receiver; 5] = [
    Receiver::XknockKnockPort,
    Receiver::XknockKnockPortSmall,
    Receiver::Xknock,
    Receiver::XdpDrop,
    Receiver::NftablesKnockPort,
];

/// The floods xknock steers to the host's closed port (at a knock port, at
/// the protected port), against that closed port behind a bare XDP_PASS
/// program and without any, and the XDP_DROP limit, in the same rounds.
const ANSWERING_FLOOD: [Receiver; 5] = [
    Receiver::XknockAnswering,
    Receiver::XknockAnsweringProtected,
    Receiver::ClosedPortBehindXdpPass,
    Receiver::ClosedPort,
    Receiver::XdpDrop,
];

/// Knobs for a quicker run (`XKNOCK_BENCH_QUICK=1`) while developing;
/// `XKNOCK_BENCH_ONLY=paths`, `=first-steps`, `=knock-flood`, `=conceal`,
/// `=first-step-survival`, `=fleet`, `=scopes` or `=memory` runs only that section.
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

/// Runs `command` with `args` in `ns`, failing with its stderr.
pub(crate) fn run_in(ns: &Netns, command: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = ns.command(command).args(args).output()?;
    ensure!(
        out.status.success(),
        "{command} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> anyhow::Result<()> {
    let effort = Effort::from_env();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&out)?;
    eprintln!(
        "bench: per-packet cost ({} trials x {} runs)",
        effort.trials, effort.repeat
    );
    // While working on the filter: one section only.
    match std::env::var("XKNOCK_BENCH_ONLY").as_deref() {
        Ok("paths") => {
            let (pass, paths) = on_cpu_1(|| per_packet(&effort))?;
            let mut md = String::new();
            parser_table(&mut md, &paths);
            println!("XDP_PASS {:.1} ns\n{md}", pass.median);
            return Ok(());
        }
        Ok("scopes") => {
            let (pass, costs) = on_cpu_1(|| scopes::scope_costs(&effort))?;
            let mut md = String::new();
            scopes::render(&mut md, pass, &costs);
            println!("{md}");
            return Ok(());
        }
        Ok("first-steps") => {
            let mut md = String::new();
            first_steps::render(
                &mut md,
                &on_cpu_1(|| first_steps::first_step_costs(&effort))?,
            );
            println!("{md}");
            return Ok(());
        }
        Ok("conceal") => {
            let (pass, costs) = on_cpu_1(|| conceal::answer_costs(&effort))?;
            let answering = flood(&effort, &ANSWERING_FLOOD)?;
            let mut md = String::new();
            conceal::render(&mut md, &effort, pass, &costs, &answering);
            println!("{md}");
            return Ok(());
        }
        Ok("fleet") => {
            let mut md = String::new();
            fleet::render(&mut md, &fleet::fleet_times(FLEET_TRIES)?);
            println!("{md}");
            return Ok(());
        }
        Ok("first-step-survival") => {
            let mut md = String::new();
            survival::render(&mut md, &survival::first_step_survival()?);
            println!("{md}");
            return Ok(());
        }
        Ok("memory") => {
            let mut md = String::new();
            memory_table(&mut md, &memory()?);
            println!("{md}");
            return Ok(());
        }
        Ok("knock-flood") => {
            let mut md = String::new();
            knock_flood_section(&mut md, &flood(&effort, &KNOCK_FLOOD)?);
            println!("{md}");
            return Ok(());
        }
        _ => {}
    }
    let (pass, paths, scale) = on_cpu_1(|| {
        let (pass, paths) = per_packet(&effort)?;
        eprintln!("bench: scale");
        Ok((pass, paths, scale(&effort)?))
    })?;
    eprintln!("bench: grant scopes");
    let (scope_pass, scopes) = on_cpu_1(|| scopes::scope_costs(&effort))?;
    eprintln!("bench: first steps from new sources");
    let first_steps = on_cpu_1(|| first_steps::first_step_costs(&effort))?;
    eprintln!("bench: steering to the closed port");
    let (answer_pass, answers) = on_cpu_1(|| conceal::answer_costs(&effort))?;
    eprintln!("bench: tracing");
    let (trace_pass, traces, instructions) = on_cpu_1(|| trace::trace_costs(&effort))?;
    eprintln!("bench: rotating rules");
    let rotating = on_cpu_1(|| rotating::rotating_costs(&effort))?;
    eprintln!("bench: SPA checks in the loader");
    let spa_costs = on_cpu_1(|| spa::spa_costs(&effort))?;
    eprintln!("bench: the fleet ({FLEET_TRIES} grants and revokes each way)");
    let fleet = fleet::fleet_times(FLEET_TRIES)?;
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
    eprintln!("bench: spoofed SYN flood at the first knock port, against XDP_DROP and nftables");
    let knock_flood = self::flood(&effort, &KNOCK_FLOOD)?;
    eprintln!("bench: clients knocking during a spoofed flood at the first knock port");
    let survival = survival::first_step_survival()?;
    eprintln!("bench: answering flood at a knock port, against the host's closed port");
    let answering = self::flood(&effort, &ANSWERING_FLOOD)?;
    eprintln!("bench: junk flood at the SPA port, against XDP_DROP");
    let spa_flood = self::flood(&effort, &[Receiver::XknockSpa, Receiver::XdpDrop])?;
    let mut report = render(&effort, pass, &paths, &scale, &memory, &open, &flood);
    scopes::render(&mut report, scope_pass, &scopes);
    first_steps::render(&mut report, &first_steps);
    knock_flood_section(&mut report, &knock_flood);
    survival::render(&mut report, &survival);
    conceal::render(&mut report, &effort, answer_pass, &answers, &answering);
    trace::render(&mut report, trace_pass, &traces, &instructions);
    rotating::render(&mut report, &rotating);
    spa::render(&mut report, &spa_costs, &spa_flood);
    fleet::render(&mut report, &fleet);
    write(&out.join("report.md"), &report)?;
    write(&out.join("chart.svg"), &chart(pass, &paths))?;
    println!("{report}");
    Ok(())
}

/// Runs `work` on a thread pinned to CPU 1: test runs execute on the
/// calling CPU, and baselines and paths must see the same core.
fn on_cpu_1<T: Send>(work: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_to_cpu(1)?;
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?
    })
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
