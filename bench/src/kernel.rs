//! In-kernel cost per packet through BPF_PROG_TEST_RUN: xknock's paths
//! against XDP_PASS, the same with large maps, and the maps' memory.

use super::*;

/// ns per packet of `frame`, `effort.trials` times `effort.repeat` runs.
pub(crate) fn cost(
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
pub(crate) fn ns_per_packet(
    run: &dyn Fn(&[u8], u32) -> anyhow::Result<Duration>,
    frame: &[u8],
    effort: &Effort,
) -> anyhow::Result<f64> {
    Ok(run(frame, effort.repeat)?.as_secs_f64() * 1e9)
}

pub(crate) fn xknock_run(filter: &Filter) -> impl Fn(&[u8], u32) -> anyhow::Result<Duration> + '_ {
    |frame, repeat| Ok(filter.test_run(frame, repeat)?.duration)
}

pub(crate) fn baseline(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .context(name.to_owned())?
        .try_into()?;
    program.load()?;
    Ok(())
}

pub(crate) fn baseline_run<'a>(
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

pub(crate) fn tcp(src: &str, dst: &str, port: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(ip(src), ip(dst), port, flags).build().0
}

pub(crate) fn knock_frames(src: &str) -> Vec<Vec<u8>> {
    vec![
        tcp(src, SERVER, 7291, TCP_SYN),
        Frame::udp(ip(src), ip(SERVER), 4728).build().0,
        tcp(src, SERVER, 6742, TCP_SYN),
    ]
}

pub(crate) struct PathCost {
    pub path: &'static str,
    pub stat: Stat,
    /// Median over trials of the path's cost over XDP_PASS's, measured
    /// right before it.
    pub vs_pass: f64,
}

/// Per-packet cost of each path through xknock, against the minimal
/// fail-closed filter (`xdp_minimal_filter`) on the same frame and
/// XDP_PASS.
pub(crate) fn per_packet(effort: &Effort) -> anyhow::Result<(Stat, Vec<ParserCost>)> {
    let mut baselines = Ebpf::load(BASELINE_OBJECT)?;
    baseline(&mut baselines, "xdp_pass")?;
    baseline(&mut baselines, "xdp_minimal_filter")?;
    let plain = tcp(CLIENT, SERVER, 80, TCP_ACK);
    let pass_run = baseline_run(&baselines, "xdp_pass");
    let minimal_run = baseline_run(&baselines, "xdp_minimal_filter");

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
    let udp = |src: &str, dst: &str| Frame::udp(ip(src), ip(dst), 53).build().0;

    let paths: Vec<(&'static str, Target, Vec<u8>)> = vec![
        ("non-IP frame (ARP)", Target::Untargeted, arp),
        ("unprotected TCP ACK", Target::Unprotected, plain.clone()),
        (
            "unprotected TCP SYN",
            Target::Unprotected,
            tcp(CLIENT, SERVER, 80, TCP_SYN),
        ),
        (
            "unprotected UDP :53",
            Target::Unprotected,
            udp(CLIENT, SERVER),
        ),
        (
            "unprotected TCP SYN over IPv6",
            Target::Unprotected,
            tcp(CLIENT_V6, SERVER_V6, 80, TCP_SYN),
        ),
        (
            "unprotected UDP :53 over IPv6",
            Target::Unprotected,
            udp(CLIENT_V6, SERVER_V6),
        ),
        (
            "unprotected TCP ACK over IPv6",
            Target::Unprotected,
            tcp(CLIENT_V6, SERVER_V6, 80, TCP_ACK),
        ),
        (
            "SYN to protected port, no grant (drop)",
            Target::Stateless,
            tcp(CLIENT, SERVER, 22, TCP_SYN),
        ),
        (
            "same over IPv6",
            Target::Stateless,
            tcp(CLIENT_V6, SERVER_V6, 22, TCP_SYN),
        ),
        (
            "same, source sharing a live client's slot",
            Target::Untargeted,
            tcp(shares_slot, SERVER, 22, TCP_SYN),
        ),
        (
            "knock step (repeated: a retransmit)",
            Target::Untargeted,
            tcp("198.18.0.7", SERVER, 7291, TCP_SYN),
        ),
        (
            "ACK to protected port with live grant",
            Target::Untargeted,
            tcp(granted, SERVER, 22, TCP_ACK),
        ),
        (
            "packet of an admitted flow",
            Target::Untargeted,
            flow_ack.build().0,
        ),
        (
            "unprotected TCP ACK, 802.1ad+802.1Q",
            Target::Untargeted,
            tagged.build().0,
        ),
        (
            "echo request (ping), no knock size",
            Target::Untargeted,
            Frame::echo(ip(CLIENT), ip(SERVER), 56).build().0,
        ),
    ];
    let xknock = xknock_run(&filter);
    let mut pass_samples = Vec::new();
    let mut samples = vec![[const { Vec::new() }; 5]; paths.len()];
    for _ in 0..effort.trials {
        for ((_, _, frame), [xk, min, ratio, xk_work, min_work]) in paths.iter().zip(&mut samples) {
            let pass = ns_per_packet(&pass_run, &plain, effort)?;
            let minimal = ns_per_packet(&minimal_run, frame, effort)?;
            let cost = ns_per_packet(&xknock, frame, effort)?;
            pass_samples.push(pass);
            xk.push(cost);
            min.push(minimal);
            ratio.push(cost / minimal);
            xk_work.push(cost - pass);
            min_work.push(minimal - pass);
        }
    }
    let costs = paths
        .iter()
        .zip(samples)
        .map(
            |((path, target, _), [xk, min, ratio, xk_work, min_work])| ParserCost {
                path,
                target: *target,
                xknock: Stat::of(xk),
                minimal: Stat::of(min),
                vs_minimal: Stat::of(ratio).median,
                xknock_work: Stat::of(xk_work).median,
                minimal_work: Stat::of(min_work).median,
            },
        )
        .collect();
    Ok((Stat::of(pass_samples), costs))
}

/// What the issue of the hot path asks of a path, against the minimal filter.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Target {
    Untargeted,
    /// Traffic xknock does not touch: at most 1.5x.
    Unprotected,
    /// The drop path of a source without state: at most 2x.
    Stateless,
}

impl Target {
    pub(crate) fn limit(self) -> Option<f64> {
        match self {
            Target::Untargeted => None,
            Target::Unprotected => Some(1.5),
            Target::Stateless => Some(2.0),
        }
    }
}

/// One path through xknock against the minimal filter on the same frame.
pub(crate) struct ParserCost {
    pub path: &'static str,
    pub target: Target,
    pub xknock: Stat,
    pub minimal: Stat,
    /// Median over trials of xknock's cost over the minimal filter's.
    pub vs_minimal: f64,
    /// Medians over trials of each one's cost over XDP_PASS's in the same
    /// trial: the work itself, without the harness.
    pub xknock_work: f64,
    pub minimal_work: f64,
}

/// `paired_trials` of paths that each name the filter they run through,
/// against XDP_PASS on an unprotected ACK.
pub(crate) fn paired_filter_trials(
    effort: &Effort,
    paths: &[(&'static str, (&Filter, Vec<u8>))],
) -> anyhow::Result<(Stat, Vec<PathCost>)> {
    let mut baselines = Ebpf::load(BASELINE_OBJECT)?;
    baseline(&mut baselines, "xdp_pass")?;
    let pass_run = baseline_run(&baselines, "xdp_pass");
    let plain = tcp(CLIENT, SERVER, 80, TCP_ACK);
    paired_trials(
        effort.trials,
        paths,
        || ns_per_packet(&pass_run, &plain, effort),
        |(filter, frame)| ns_per_packet(&xknock_run(filter), frame, effort),
    )
}

/// Each path's cost, `trials` times. Each trial of a path runs right after
/// one of `pass` (XDP_PASS), and the ratio is taken within the pair; the
/// paths take turns, trial by trial, so a slow spell of the machine spreads
/// over all of them. Returns XDP_PASS's cost and the paths'.
pub(crate) fn paired_trials<T>(
    trials: usize,
    paths: &[(&'static str, T)],
    pass: impl Fn() -> anyhow::Result<f64>,
    cost_of: impl Fn(&T) -> anyhow::Result<f64>,
) -> anyhow::Result<(Stat, Vec<PathCost>)> {
    let mut pass_samples = Vec::new();
    let mut samples = vec![(Vec::new(), Vec::new()); paths.len()];
    for _ in 0..trials {
        for ((_, path), (costs, ratios)) in paths.iter().zip(&mut samples) {
            let pass = pass()?;
            let cost = cost_of(path)?;
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
pub(crate) fn fill(filter: &mut Filter, n: u32) -> anyhow::Result<()> {
    let now = monotonic_ns();
    let source = |i: u32| SourceRule {
        addr: ipv4_mapped((0x0a00_0000u32 + i).to_be_bytes()),
        rule: 0,
    };
    let maps = filter.maps_mut();
    let sequence_tag = maps.rules()?[0].sequence_tag;
    for i in 0..n {
        let progress = Progress {
            started_ns: now,
            next_step: 2,
            sequence_tag,
        };
        maps.plant_progress(&source(i), &progress, now)?;
    }
    for i in 0..n {
        let grant = Grant {
            expires_ns: now + 3600 * SECOND_NS,
            granted_ns: now,
        };
        let key = source(i + n);
        maps.plant_grant(&GrantKey::new(&addr_words(&key.addr), key.rule, 0), &grant)?;
    }
    // Grants planted from here raise no horizon; the measured source's must be live.
    plant_live_horizon(filter, &source(n).addr)
}

/// Raises a source's horizons far into the future, as if it (or a source
/// sharing its slot) held every kind of state.
pub(crate) fn plant_live_horizon(filter: &mut Filter, addr: &Addr) -> anyhow::Result<()> {
    let (slot, _) = filter.maps().source_horizon(addr)?;
    let live = SourceHorizon {
        knocking_until: u32::MAX / 2,
        admitted_until: u32::MAX / 2,
        failing_until: u32::MAX / 2,
        later_steps: 1,
    };
    filter.maps_mut().set_source_horizon(slot, &live)?;
    Ok(())
}

pub(crate) struct ScaleRow {
    pub entries: u32,
    pub step: Stat,
    pub granted: Stat,
    pub miss: Stat,
}

/// Per-packet cost with 1, 10k and 1M entries in the progress and grant maps.
pub(crate) fn scale(effort: &Effort) -> anyhow::Result<Vec<ScaleRow>> {
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
pub(crate) fn memory() -> anyhow::Result<BTreeMap<String, u64>> {
    let filter = Filter::load(&bench_config(""))?;
    let mut sizes = BTreeMap::new();
    for (name, fd) in filter.map_fds() {
        let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let memlock = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .context("no memlock in fdinfo")?
            .trim()
            .parse()?;
        sizes.insert(name, memlock);
    }
    Ok(sizes)
}
