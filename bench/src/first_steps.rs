//! The knock-port flood's in-kernel cost: a first step from a new source at
//! every packet, into a `FIRST_STEPS` already full. Each reads its bucket
//! (one cache line of eight one-word records), finds no record of its own,
//! picks the record it displaces (the bucket's oldest) and writes its own
//! over it with one store. Measured at the default size, past the caches,
//! and at `SMALL_FIRST_STEPS` records, which stay in them.
//! BPF_PROG_TEST_RUN cannot repeat such a packet (a frame's second run is a
//! retransmit), so each frame runs once and the kernel's own run-time
//! statistics (BPF_ENABLE_STATS) time it; XDP_PASS and the minimal filter
//! run the same frames, timed the same way.

use aya::sys::{Stats, enable_stats};

use super::*;

/// Per-packet cost of each program on first steps from new sources.
pub(crate) struct FirstStepCosts {
    pub pass: Stat,
    pub minimal: Stat,
    /// xknock at each table size, largest first.
    pub xknock: Vec<XknockFirstStep>,
    /// Frames per trial.
    pub frames: u32,
}

/// xknock's cost on first steps into a full `FIRST_STEPS` of `records`.
pub(crate) struct XknockFirstStep {
    /// Records of the table, as the loader rounds them.
    pub records: u32,
    pub stat: Stat,
    /// Medians over trials of the cost over XDP_PASS's and over the minimal
    /// filter's in the same trial.
    pub work: f64,
    pub vs_minimal: f64,
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
    let configs = [bench_config(SILENT), small_first_steps_config()];
    let filters = configs
        .iter()
        .map(|config| {
            let filter = Filter::load(config)?;
            // Fill FIRST_STEPS, so that each measured first step displaces
            // one: twice its records fill nearly every way of every bucket.
            let records = first_step_records(config.first_step_entries);
            for n in 0..2 * records {
                filter.test_run(&first_step(n), 1)?;
            }
            Ok((records, filter))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Sources none of the tables has seen.
    let filled = filters.iter().map(|(records, _)| 2 * records).max();
    let mut sources = filled.unwrap_or(0)..u32::MAX;
    let frames = (effort.repeat / 10).max(1000);
    let (mut pass_samples, mut minimal_samples) = (Vec::new(), Vec::new());
    // Per table: cost, cost over XDP_PASS's, over the minimal filter's.
    let mut samples = vec![[const { Vec::new() }; 3]; filters.len()];
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
        pass_samples.push(pass_ns);
        minimal_samples.push(minimal_ns);
        for ((_, filter), [cost, work, ratio]) in filters.iter().zip(&mut samples) {
            let xknock_ns = ns_per_run(&batch, xknock_run(filter), || Ok(filter.run_stats()?))?;
            cost.push(xknock_ns);
            work.push(xknock_ns - pass_ns);
            ratio.push(xknock_ns / minimal_ns);
        }
    }
    Ok(FirstStepCosts {
        pass: Stat::of(pass_samples),
        minimal: Stat::of(minimal_samples),
        xknock: filters
            .iter()
            .zip(samples)
            .map(|((records, _), [cost, work, ratio])| XknockFirstStep {
                records: *records,
                stat: Stat::of(cost),
                work: Stat::of(work).median,
                vs_minimal: Stat::of(ratio).median,
            })
            .collect(),
        frames,
    })
}

/// The memory of a `FIRST_STEPS` of `records`, in KiB or MiB.
fn table_size(records: u32) -> String {
    let kib = (u64::from(records) * 8) >> 10;
    if kib >= 1024 {
        format!("{} MiB", kib >> 10)
    } else {
        format!("{kib} KiB")
    }
}

/// The table of `first_step_costs`.
pub(crate) fn render(md: &mut String, costs: &FirstStepCosts) {
    let _ = writeln!(
        md,
        "\nA first step from a new source at every packet (the knock-port flood's \
         packet), into a full `FIRST_STEPS`: a bucket read (one 64-byte line of eight \
         one-word records), the record it displaces (the bucket's oldest), one store. \
         At the default size (8 bytes a record, past the caches) and a small table \
         that stays in them. Each frame run once, timed by the kernel's run-time \
         statistics ({} frames a trial, the same frames for every program):\n\n\
         | program | ns per packet (median) | range | work over XDP_PASS (ns) | vs minimal filter |\n\
         | --- | ---: | ---: | ---: | ---: |",
        costs.frames
    );
    for (name, stat) in [
        ("XDP_PASS", &costs.pass),
        ("minimal fail-closed filter", &costs.minimal),
    ] {
        let _ = writeln!(md, "| {name} | {} | | |", stat.cells(1));
    }
    for xknock in &costs.xknock {
        let _ = writeln!(
            md,
            "| xknock: first step, new source, FIRST_STEPS of {} records ({}) | {} | {:.0} | {:.2}x |",
            xknock.records,
            table_size(xknock.records),
            xknock.stat.cells(1),
            xknock.work,
            xknock.vs_minimal
        );
    }
}
