//! What concealment costs: building a closed port's answer in XDP, against
//! stopping the same packet silently and against XDP_PASS. Every run is
//! measured alone (one BPF_PROG_TEST_RUN per packet, the kernel's own
//! timing): the program rewrites the frame it answers, so a repeated run
//! would measure the answer to the answer.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use aya::Ebpf;
use lab::wire::{Probe, SYN};
use xknock::loader::{BASELINE_OBJECT, Filter};

use crate::{
    CLIENT, CLIENT_V6, Effort, FloodRow, PathCost, SERVER, SERVER_V6, Stat, baseline, baseline_run,
    bench_config, cost_table, flood_table, ip, paired_trials, xknock_run,
};

/// Unicast addresses for the frames' Ethernet header.
const TO: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const FROM: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// The filter as the bench's other rows load it, but steering what it
/// stops to the host's closed port (`conceal = "closed"`).
fn answering() -> anyhow::Result<Filter> {
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
    let answering = answering()?;
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
        ("the same, answered with an RST", (&answering, syn(v4))),
        (
            "IPv6 SYN to a protected port, answered with an RST",
            (&answering, syn(v6)),
        ),
        (
            "UDP to a knock port, answered with an ICMP port unreachable",
            (&answering, udp(v4)),
        ),
        (
            "IPv6 UDP to a knock port, answered with ICMPv6",
            (&answering, udp(v6)),
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
        "\n## Concealment: building a closed port's answer (BPF_PROG_TEST_RUN, run by run)\n\n\
         Each figure is the mean of {} single runs, {} trials; a single run carries the test \
         harness's fixed cost, so compare within this table. ICMP limits are lifted so every \
         UDP run builds its answer.\n",
        (effort.repeat / 50).max(1000),
        effort.trials,
    );
    cost_table(md, pass, costs, 0);
    let _ = writeln!(
        md,
        "\nA spoofed SYN flood at the first knock port, every SYN answered with an RST that \
         goes back over veth to an XDP_DROP program on the client, in rounds of its own against \
         a bare XDP_DROP receiver ({} rounds of {} frames).\n",
        effort.flood_rounds, effort.flood_frames
    );
    flood_table(md, "pkt/s", answering);
}
