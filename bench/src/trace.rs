//! What tracing costs: nothing while no trace runs (the filter that runs
//! carries no trace code), and this much while one does.

use super::*;

/// The traced source in these measurements; the probes come from `CLIENT`.
const TRACED: &str = "198.18.0.77";

/// Instructions of the filter program as the kernel runs it.
pub(crate) struct Instructions {
    pub filter: u32,
    pub traced: u32,
}

/// Per-packet cost, against XDP_PASS, of two paths through the filter as it
/// normally runs and through the traced variant (for another source, which
/// is what all traffic pays during a trace, and for the traced source).
pub(crate) fn trace_costs(effort: &Effort) -> anyhow::Result<(Stat, Vec<PathCost>, Instructions)> {
    let plain = tcp(CLIENT, SERVER, 80, TCP_ACK);
    let config = bench_config(SILENT);
    let filter = Filter::load(&config)?;
    let other = Filter::load_traced(&config, &key_addr(ip(TRACED)))?;
    let this = Filter::load_traced(&config, &key_addr(ip(CLIENT)))?;
    let protected = tcp(CLIENT, SERVER, 22, TCP_SYN);
    let paths: Vec<(&'static str, (&Filter, Vec<u8>))> = vec![
        (
            "unprotected TCP ACK, no trace running",
            (&filter, plain.clone()),
        ),
        (
            "same, while another source is traced",
            (&other, plain.clone()),
        ),
        ("same, from the traced source (logged)", (&this, plain)),
        (
            "SYN to protected port (drop), no trace running",
            (&filter, protected.clone()),
        ),
        (
            "same, while another source is traced",
            (&other, protected.clone()),
        ),
        ("same, from the traced source (logged)", (&this, protected)),
    ];
    let (pass, costs) = paired_filter_trials(effort, &paths)?;
    let instructions = Instructions {
        filter: filter.instructions()?,
        traced: other.instructions()?,
    };
    Ok((pass, costs, instructions))
}

pub(crate) fn render(md: &mut String, pass: Stat, costs: &[PathCost], insns: &Instructions) {
    let _ = writeln!(
        md,
        "\n## Tracing (`xknock trace`)\n\nThe filter that runs carries no trace code: its program is {} \
         instructions as the kernel runs it; the traced variant, swapped in only while a trace runs, is \
         {} (it hands every verdict to a logging program by tail call, which parses again and logs \
         decisions about the traced source through aya-log). Same pairing with XDP_PASS as above.\n",
        insns.filter, insns.traced
    );
    cost_table(md, pass, costs, 1);
}
