//! What concealment costs: steering a stopped packet to the host's closed
//! port in XDP, against stopping it silently and against XDP_PASS; and a
//! flood the host answers through xknock, against the host's own closed
//! port. Every test run is measured alone (one BPF_PROG_TEST_RUN per
//! packet, the kernel's own timing): a steered run returns XDP_PASS with
//! the frame rewritten, so a repeated run would steer the steered frame.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use aya::Ebpf;
use lab::wire::{Probe, SYN};
use xknock::loader::{BASELINE_OBJECT, Filter};

use crate::{
    CLIENT, CLIENT_V6, Effort, FloodRow, PathCost, SERVER, SERVER_V6, Stat, baseline, baseline_run,
    bench_config, cost_table, flood_table_against, ip, paired_trials, round_ratio, row_of,
    xknock_run,
};

/// Unicast addresses for the frames' Ethernet header.
const TO: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const FROM: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// The filter as the bench's other rows load it, but steering what it
/// stops to the host's closed port (`conceal = "closed"`).
fn steering() -> anyhow::Result<Filter> {
    Ok(Filter::load(&bench_config(""))?)
}

/// Mean ns of `runs` single runs of `frame`.
fn single_runs(
    run: &dyn Fn(&[u8], u32) -> anyhow::Result<Duration>,
    frame: &[u8],
    runs: u32,
) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        total += run(frame, 1)?;
    }
    Ok(total.as_secs_f64() * 1e9 / f64::from(runs))
}

pub fn answer_costs(effort: &Effort) -> anyhow::Result<(Stat, Vec<PathCost>)> {
    let runs = (effort.repeat / 50).max(1000);
    let mut baselines = Ebpf::load(BASELINE_OBJECT)?;
    baseline(&mut baselines, "xdp_pass")?;
    let pass_run = baseline_run(&baselines, "xdp_pass");
    let silent = Filter::load(&bench_config(crate::SILENT))?;
    let steering = steering()?;
    let (v4, v6): ((IpAddr, IpAddr), (IpAddr, IpAddr)) =
        ((ip(CLIENT), ip(SERVER)), (ip(CLIENT_V6), ip(SERVER_V6)));
    let syn = |(src, dst): (IpAddr, IpAddr)| Probe::tcp(src, dst, 22, SYN).frame(TO, FROM);
    let udp = |(src, dst): (IpAddr, IpAddr)| Probe::udp(src, dst, 4728, 12).frame(TO, FROM);
    let plain = Probe::tcp(v4.0, v4.1, 80, SYN).frame(TO, FROM);
    let paths: Vec<(&'static str, (&Filter, Vec<u8>))> = vec![
        (
            "SYN to a protected port, stopped silently (conceal = \"drop\")",
            (&silent, syn(v4)),
        ),
        (
            "the same, steered to the host's closed port (conceal = \"closed\")",
            (&steering, syn(v4)),
        ),
        (
            "IPv6 SYN to a protected port, steered to the host's closed port",
            (&steering, syn(v6)),
        ),
        (
            "UDP to a knock port, steered to the host's closed port",
            (&steering, udp(v4)),
        ),
        (
            "IPv6 UDP to a knock port, steered to the host's closed port",
            (&steering, udp(v6)),
        ),
    ];
    paired_trials(
        effort.trials,
        &paths,
        || single_runs(&pass_run, &plain, runs),
        |(filter, frame)| single_runs(&xknock_run(filter), frame, runs),
    )
}

/// The report's section on concealment.
pub fn render(
    md: &mut String,
    effort: &Effort,
    pass: Stat,
    costs: &[PathCost],
    answering: &[FloodRow],
) {
    let _ = writeln!(
        md,
        "\n## Concealment: steering to the host's closed port (BPF_PROG_TEST_RUN, run by run)\n\n\
         Each figure is the mean of {} single runs, {} trials; a single run carries the test \
         harness's fixed cost, so compare within this table. A steered run ends in XDP_PASS with \
         the frame rewritten (destination port 0, source port a keyed hash, checksums updated, \
         the flow recorded in `STEERED`): the XDP part only. The host's answer and its ports put \
         back on egress are in the flood below.\n",
        (effort.repeat / 50).max(1000),
        effort.trials,
    );
    cost_table(md, pass, costs, 0);
    let _ = writeln!(
        md,
        "\nA spoofed SYN flood at the first knock port (every SYN also a first knock step) and \
         at the protected port: xknock (`conceal = \"closed\"`) steers every SYN to the host's \
         closed port, the kernel answers it with an RST and xknock's egress program gives the \
         RST back its ports. Against them, in the same rounds ({} rounds of {} frames), the same \
         flood at the host's own closed port, behind a bare XDP_PASS program (veth's XDP path, as \
         xknock takes it) and without any, and a bare XDP_DROP receiver. The RSTs go back over veth to an XDP_DROP program on the client \
         (through a default route, the client's MAC static). Both answering rows count the RSTs \
         the server's kernel sent (`OutRsts` in its `/proc/net/snmp`), so they measure the same \
         thing; a random source the kernel will not answer (0/8, 127/8, multicast) is counted in \
         neither.\n",
        effort.flood_rounds, effort.flood_frames
    );
    flood_table_against(
        md,
        "pkt/s",
        answering,
        &[
            (
                "the closed port behind XDP_PASS",
                "the host's own closed port behind",
            ),
            ("the closed port", "the host's own closed port, no"),
            ("XDP_DROP", "bare XDP_DROP"),
        ],
    );
    program_costs_table(md, answering);
    let Some(closed) = row_of(answering, "the host's own closed port behind") else {
        return;
    };
    for (at, xknock) in [
        (
            "the first knock port",
            row_of(
                answering,
                "xknock (conceal = \"closed\"), flood at the first",
            ),
        ),
        (
            "the protected port",
            row_of(
                answering,
                "xknock (conceal = \"closed\"), flood at the protected",
            ),
        ),
    ] {
        let Some(xknock) = xknock else {
            continue;
        };
        let count = |name: &str| xknock.answers.get(name).copied().unwrap_or(0);
        let _ = writeln!(
            md,
            "\nAt {at}, xknock answered {:.2} as fast as the closed port behind XDP_PASS in the same rounds \
             (median of per-round ratios). Its own counters over its rounds: {} SYNs steered, \
             {} RSTs restored, {} dropped (their slot taken by another flow).",
            round_ratio(xknock, closed),
            count("steered_to_host"),
            count("answer_restored"),
            count("silent_unmatched"),
        );
    }
}

/// What the BPF programs themselves took per run in the answering flood
/// (`FloodRow::programs`): one more round per receiver, statistics on.
fn program_costs_table(md: &mut String, answering: &[FloodRow]) {
    let rows: Vec<_> = answering
        .iter()
        .flat_map(|row| {
            row.programs
                .iter()
                .map(move |(program, ns)| (row.label, *program, *ns))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nThe BPF programs' own time in the same flood: one more round for each receiver \
         with the kernel's run-time statistics on (off in the timed rounds, as each run then \
         pays for two clock reads, which every figure here carries). The rest of a packet's \
         cost is the kernel's own.\n\n\
         | receiver | program | ns per run |\n| --- | --- | ---: |"
    );
    for (receiver, program, ns) in rows {
        let _ = writeln!(md, "| {receiver} | {program} | {ns:.0} |");
    }
}
