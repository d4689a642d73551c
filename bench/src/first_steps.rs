//! The knock-port flood's in-kernel cost: a first step from a new source at
//! every packet, into a `FIRST_STEPS` map already full (so every insert
//! evicts). BPF_PROG_TEST_RUN cannot repeat such a packet (a frame's second
//! run is a retransmit), so each frame runs once and the kernel's own
//! run-time statistics (BPF_ENABLE_STATS) time it; XDP_PASS and the minimal
//! filter run the same frames, timed the same way.

use aya::sys::{Stats, enable_stats};

use super::*;

/// Per-packet cost of each program on first steps from new sources.
pub(crate) struct FirstStepCosts {
    pub pass: Stat,
    pub minimal: Stat,
    pub xknock: Stat,
    /// Medians over trials of xknock's cost over XDP_PASS's and over the
    /// minimal filter's in the same trial.
    pub xknock_work: f64,
    pub vs_minimal: f64,
    /// Frames per trial.
    pub frames: u32,
}

/// A distinct source for every `n`, from 10.0.0.0/8.
fn new_source(n: u32) -> String {
    let [_, b, c, d] = n.to_be_bytes();
    format!("10.{b}.{c}.{d}")
}

fn first_step(n: u32) -> Vec<u8> {
    tcp(&new_source(n), SERVER, FIRST_STEP_PORT, TCP_SYN)
}

/// Run time and runs so far of an XDP program, by the kernel's statistics.
fn program_stats(program: &Xdp) -> anyhow::Result<(Duration, u64)> {
    let info = program.info()?;
    Ok((info.run_time(), info.run_count()))
}

/// ns per run over `frames`, each run once (`run`, as `kernel`'s runners
/// take a frame and a repeat count), by the statistics `stats` reads.
fn ns_per_run(
    frames: &[Vec<u8>],
    run: impl Fn(&[u8], u32) -> anyhow::Result<Duration>,
    stats: impl Fn() -> anyhow::Result<(Duration, u64)>,
) -> anyhow::Result<f64> {
    let (time_before, runs_before) = stats()?;
    for frame in frames {
        run(frame, 1)?;
    }
    let (time_after, runs_after) = stats()?;
    let runs = runs_after - runs_before;
    ensure!(runs == frames.len() as u64, "{runs} runs counted");
    Ok((time_after - time_before).as_secs_f64() * 1e9 / runs as f64)
}

pub(crate) fn first_step_costs(effort: &Effort) -> anyhow::Result<FirstStepCosts> {
    // Statistics stay on while the returned descriptor is open.
    let _stats = enable_stats(Stats::RunTime)?;
    let mut baselines = Ebpf::load(BASELINE_OBJECT)?;
    baseline(&mut baselines, "xdp_pass")?;
    baseline(&mut baselines, "xdp_minimal_filter")?;
    let program = |name: &str| -> anyhow::Result<&Xdp> {
        Ok(baselines
            .program(name)
            .context(name.to_owned())?
            .try_into()?)
    };
    let (pass, minimal) = (program("xdp_pass")?, program("xdp_minimal_filter")?);
    let config = bench_config(SILENT);
    let filter = Filter::load(&config)?;
    // Fill FIRST_STEPS, so that each measured first step displaces one:
    // twice its records fill nearly every way of every bucket.
    let mut sources = 0..u32::MAX;
    for n in sources
        .by_ref()
        .take(2 * config.first_step_entries as usize)
    {
        filter.test_run(&first_step(n), 1)?;
    }
    let frames = (effort.repeat / 10).max(1000);
    let mut samples = [const { Vec::new() }; 5];
    for _ in 0..effort.trials {
        let batch: Vec<Vec<u8>> = sources
            .by_ref()
            .take(frames as usize)
            .map(first_step)
            .collect();
        let pass_ns = ns_per_run(&batch, baseline_run(&baselines, "xdp_pass"), || {
            program_stats(pass)
        })?;
        let minimal_ns = ns_per_run(
            &batch,
            baseline_run(&baselines, "xdp_minimal_filter"),
            || program_stats(minimal),
        )?;
        let xknock_ns = ns_per_run(&batch, xknock_run(&filter), || Ok(filter.run_stats()?))?;
        for (sample, value) in samples.iter_mut().zip([
            pass_ns,
            minimal_ns,
            xknock_ns,
            xknock_ns - pass_ns,
            xknock_ns / minimal_ns,
        ]) {
            sample.push(value);
        }
    }
    let [pass, minimal, xknock, work, ratio] = samples;
    Ok(FirstStepCosts {
        pass: Stat::of(pass),
        minimal: Stat::of(minimal),
        xknock: Stat::of(xknock),
        xknock_work: Stat::of(work).median,
        vs_minimal: Stat::of(ratio).median,
        frames,
    })
}

/// The table of `first_step_costs`.
pub(crate) fn render(md: &mut String, costs: &FirstStepCosts) {
    let _ = writeln!(
        md,
        "\nA first step from a new source at every packet (the knock-port flood's \
         packet), into a full `FIRST_STEPS`: each frame run once, timed by the \
         kernel's run-time statistics ({} frames a trial):\n\n\
         | program | ns per packet (median) | range |\n| --- | ---: | ---: |",
        costs.frames
    );
    for (name, stat) in [
        ("XDP_PASS", &costs.pass),
        ("minimal fail-closed filter", &costs.minimal),
        ("xknock: first step, new source", &costs.xknock),
    ] {
        let _ = writeln!(md, "| {name} | {} |", stat.cells(1));
    }
    let _ = writeln!(
        md,
        "\nxknock's work over XDP_PASS: {:.0} ns; {:.2}x the minimal filter.",
        costs.xknock_work, costs.vs_minimal
    );
}
