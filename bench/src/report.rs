//! The report (`target/bench/report.md`) and its chart.

use super::*;

pub(crate) fn render(
    effort: &Effort,
    pass: Stat,
    paths: &[ParserCost],
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
        "## In-kernel cost per packet (BPF_PROG_TEST_RUN)\n\nEach path against a minimal fail-closed \
         filter (`xdp_minimal_filter`: EtherType, IPv4 version, real IHL, fragment offset, protocol, \
         IPv6 next header, TCP/UDP destination port; drops TCP 22, drops what it cannot read) run on \
         the same frame, and against XDP_PASS ({} ns here: the harness's own cost), one right after \
         the other on the same CPU; the paths take turns trial by trial. Times are the kernel's \
         (whole ns per run, averaged over {} runs). \"work\" is a cost minus XDP_PASS's in the same trial. \
         The minimal filter reads no VLAN tag: a tagged frame is not IP to it.\n",
        fmt1(pass.median),
        effort.repeat
    );
    parser_table(&mut md, paths);
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
    flood_table(&mut md, "dropped pkt/s", flood);
    let row = |start: &str| row_of(flood, start);
    // Median over rounds of a's rate over b's in the same round.
    let ratio = |a: Option<&FloodRow>, b: Option<&FloodRow>| match (a, b) {
        (Some(a), Some(b)) => round_ratio(a, b),
        _ => f64::NAN,
    };
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
    let worst = |target: Target| {
        paths
            .iter()
            .filter(|p| p.target == target)
            .map(|p| p.vs_minimal)
            .fold(f64::NAN, f64::max)
    };
    let (unprotected, stateless) = (worst(Target::Unprotected), worst(Target::Stateless));
    let targets = [
        (
            "unprotected TCP/UDP (IPv4, IPv6): at most 1.5x the minimal filter (worst path)",
            unprotected,
            unprotected <= 1.5,
        ),
        (
            "drop path of a source without state: at most 2x the minimal filter (worst)",
            stateless,
            stateless <= 2.0,
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
    memory_table(&mut md, memory);
    md
}

/// The maps' memory (`kernel::memory`).
pub(crate) fn memory_table(md: &mut String, memory: &BTreeMap<String, u64>) {
    let total: u64 = memory.values().sum();
    let records = first_step_records(bench_config("").first_step_entries);
    let _ = writeln!(
        md,
        "\n## Memory at the default sizes (kernel memlock)\n\n`FIRST_STEPS` is an array of \
         {records} one-word records (8 bytes each, in 64-byte buckets of eight), all of it \
         allocated at load.\n\n| map | bytes |\n| --- | ---: |"
    );
    for (name, bytes) in memory {
        let _ = writeln!(md, "| {name} | {bytes} |");
    }
    let _ = writeln!(
        md,
        "| **total** | **{total}** ({:.1} MiB) |",
        total as f64 / 1048576.0
    );
}

/// The spoofed flood at the first knock port: every SYN a first step from a
/// new source, which the contract says must be kept as knock progress;
/// against the flood at the protected port, XDP_DROP and nftables in the
/// same rounds.
pub(crate) fn knock_flood_section(md: &mut String, rows: &[FloodRow]) {
    let default = first_step_records(bench_config(SILENT).first_step_entries);
    let _ = writeln!(
        md,
        "\n## Spoofed SYN flood at the first knock port (random sources, `conceal = \"drop\"`)\n\n\
         Every SYN is the first step of a rule from a new source: xknock keeps it as knock progress \
         in `FIRST_STEPS`, an array of 64-byte buckets of eight one-word records (a keyed hash of \
         the source picks the bucket; the new record takes a free way or displaces the bucket's \
         oldest, and only first steps live there: a bucket read and one store), raises the \
         source's knocking horizon and drops it. Two tables: the default ({} records, {} MiB, \
         past the caches) and a small one ({SMALL_FIRST_STEPS} records, {} KiB). Same generator \
         as above; in the same rounds, xknock flooded at the protected port (tcp:22: no knock \
         step, dropped), the bare XDP_DROP program, and nftables dropping the first knock port.\n",
        default,
        (u64::from(default) * 8) >> 20,
        (u64::from(first_step_records(SMALL_FIRST_STEPS)) * 8) >> 10,
    );
    flood_table(md, "dropped pkt/s", rows);
    let (protected, nft) = (
        row_for(rows, Receiver::Xknock),
        row_for(rows, Receiver::NftablesKnockPort),
    );
    let _ = writeln!(
        md,
        "\nEach the median over rounds of the ratio within a round, with its range:\n"
    );
    for (receiver, table) in [
        (Receiver::XknockKnockPort, "the default table"),
        (Receiver::XknockKnockPortSmall, "the small table"),
    ] {
        let Some(knock) = row_for(rows, receiver) else {
            continue;
        };
        let versus = |other: Option<&FloodRow>| {
            other.map_or_else(
                || "-".to_owned(),
                |other| {
                    let r = round_ratios(knock, other);
                    format!("{:.2}x ({:.2}-{:.2})", r.median, r.min, r.max)
                },
            )
        };
        let _ = writeln!(
            md,
            "- first-step flood, {table}: vs nftables {}, vs the protected-port flood {}",
            versus(nft),
            versus(protected)
        );
    }
}

/// Records of a `FIRST_STEPS` configured for `entries`: as the loader
/// rounds it, a power of two of whole buckets.
pub(crate) fn first_step_records(entries: u32) -> u32 {
    knock_common::first_step_buckets(entries) * knock_common::FIRST_STEP_WAYS as u32
}

/// The first row whose receiver's label starts with `start`.
pub(crate) fn row_of<'a>(rows: &'a [FloodRow], start: &str) -> Option<&'a FloodRow> {
    rows.iter().find(|r| r.label.starts_with(start))
}

/// A table of flood receivers: rate, range, ratio to the bare XDP_DROP
/// receiver of the same rounds, and the share of frames counted.
pub(crate) fn flood_table(md: &mut String, rate: &str, rows: &[FloodRow]) {
    flood_table_against(md, rate, rows, &[("XDP_DROP", "bare XDP_DROP")]);
}

/// `flood_table` with a ratio column "vs `name`" for each of `references`
/// (`name`, the start of its row's label), to that row in the same rounds.
pub(crate) fn flood_table_against(
    md: &mut String,
    rate: &str,
    rows: &[FloodRow],
    references: &[(&str, &str)],
) {
    let (mut names, mut aligns) = (String::new(), String::new());
    for (name, _) in references {
        let _ = write!(names, " vs {name} |");
        aligns.push_str(" ---: |");
    }
    let _ = writeln!(
        md,
        "| receiver | {rate} (median) | range |{names} frames counted |\n| --- | ---: | ---: |{aligns} ---: |"
    );
    for row in rows {
        let mut ratios = String::new();
        for (_, start) in references {
            let ratio = row_of(rows, start).map_or(f64::NAN, |r| round_ratio(row, r));
            let _ = write!(ratios, " {ratio:.2} |");
        }
        let _ = writeln!(
            md,
            "| {} | {} |{ratios} {:.1} % |",
            row.label,
            row.pps.cells(0),
            row.delivered * 100.0
        );
    }
}

/// The median over rounds of `a`'s rate over `b`'s in the same round.
pub(crate) fn round_ratio(a: &FloodRow, b: &FloodRow) -> f64 {
    round_ratios(a, b).median
}

/// `a`'s rate over `b`'s in the same round, over rounds.
pub(crate) fn round_ratios(a: &FloodRow, b: &FloodRow) -> Stat {
    let per_round = a.rounds.iter().zip(&b.rounds).map(|(a, b)| a / b);
    Stat::of(per_round.collect())
}

fn fmt1(ns: f64) -> String {
    format!("{ns:.1}")
}

/// xknock's paths against the minimal filter on the same frame.
pub(crate) fn parser_table(md: &mut String, paths: &[ParserCost]) {
    let _ = writeln!(
        md,
        "| path | xknock ns (median) | range | minimal filter ns | vs minimal | target | work: xknock / minimal ns |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in paths {
        let target = p
            .target
            .limit()
            .map_or(String::new(), |l| format!("<= {l}"));
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {target} | {:.1} / {:.1} |",
            p.path,
            p.xknock.cells(1),
            p.minimal.median,
            p.vs_minimal,
            p.xknock_work,
            p.minimal_work
        );
    }
}

/// A table of per-packet costs under their XDP_PASS baseline.
pub(crate) fn cost_table(md: &mut String, pass: Stat, paths: &[PathCost], decimals: usize) {
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

pub(crate) fn chart(pass: Stat, paths: &[ParserCost]) -> String {
    let rows: Vec<(&str, f64)> = std::iter::once(("XDP_PASS baseline", pass.median))
        .chain(paths.iter().map(|p| (p.path, p.xknock.median)))
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
