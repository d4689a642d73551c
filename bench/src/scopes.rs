//! Grant scopes' cost per packet: the protected port of a rule whose grants
//! admit a prefix, against the same port of a rule without a scope, in the
//! same trials. A scoped rule's port reads the source prefix's horizon slot
//! (and looks a grant up when it is live); with a prefix grant live, every
//! address of the prefix is admitted by that lookup.

use xknock::loader::grant_from_now;

use super::*;

/// The bench's rule with `grant_scope = { ipv4 = 24, ipv6 = 64 }`.
fn scoped_config(limits: &str) -> KernelConfig {
    let text = format!(
        "{SILENT}{limits}[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"1h\"\nopen_for = \"1h\"\nprotect = [\"tcp:22\"]\n\
         grant_scope = {{ ipv4 = 24, ipv6 = 64 }}\n"
    );
    let config = Config::parse(&text).expect("bench config is valid");
    KernelConfig::try_from(&config).expect("fits")
}

/// A source outside every grant (the knock grants 198.18.0.0/24).
const OUTSIDE: &str = "198.18.5.2";

/// Prefix grants planted in the filled filter: distinct /24s of 10.0.0.0/8.
pub(crate) const PREFIX_GRANTS: u32 = 65_536;

/// Per-packet cost of the protected port's paths with and without a scope.
pub(crate) fn scope_costs(effort: &Effort) -> anyhow::Result<(Stat, Vec<PathCost>)> {
    let plain = Filter::load(&bench_config(SILENT))?;
    let scoped = Filter::load(&scoped_config(""))?;
    let limits = format!("[limits]\ngrant_entries = {}\n", 2 * PREFIX_GRANTS);
    let mut filled = Filter::load(&scoped_config(&limits))?;
    // A knock from .9 grants its /24 (and, on the plain filter, .9 alone).
    for filter in [&plain, &scoped, &filled] {
        for frame in knock_frames("198.18.0.9") {
            filter.test_run(&frame, 1)?;
        }
    }
    let hour = grant_from_now(Duration::from_secs(3600));
    for i in 0..PREFIX_GRANTS {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000u32 + (i << 8));
        filled
            .maps_mut()
            .grant(&ipv4_mapped(addr.octets()), 0, hour)?;
    }
    let paths: Vec<(&'static str, (&Filter, Vec<u8>))> = vec![
        (
            "SYN to a protected port, no grant (drop), rule without a scope",
            (&plain, tcp(OUTSIDE, SERVER, 22, TCP_SYN)),
        ),
        (
            "the same, rule with a scope",
            (&scoped, tcp(OUTSIDE, SERVER, 22, TCP_SYN)),
        ),
        (
            "the same over IPv6, rule without a scope",
            (&plain, tcp(CLIENT_V6, SERVER_V6, 22, TCP_SYN)),
        ),
        (
            "the same over IPv6, rule with a scope",
            (&scoped, tcp(CLIENT_V6, SERVER_V6, 22, TCP_SYN)),
        ),
        (
            "the same, rule with a scope, 65,536 prefix grants live elsewhere",
            (&filled, tcp(OUTSIDE, SERVER, 22, TCP_SYN)),
        ),
        (
            "ACK with a live grant of the address, rule without a scope",
            (&plain, tcp("198.18.0.9", SERVER, 22, TCP_ACK)),
        ),
        (
            "ACK from another address of a live /24 grant",
            (&scoped, tcp("198.18.0.10", SERVER, 22, TCP_ACK)),
        ),
        (
            "the same, 65,536 prefix grants live",
            (&filled, tcp("198.18.0.10", SERVER, 22, TCP_ACK)),
        ),
        (
            "unprotected TCP SYN, rule with a scope",
            (&scoped, tcp(OUTSIDE, SERVER, 80, TCP_SYN)),
        ),
    ];
    paired_filter_trials(effort, &paths)
}

/// The table of `scope_costs`.
pub(crate) fn render(md: &mut String, pass: Stat, costs: &[PathCost]) {
    let _ = writeln!(
        md,
        "\nGrant scopes (`grant_scope = {{ ipv4 = 24, ipv6 = 64 }}`) at the protected \
         port, against the same rule without a scope, in the same trials (each right \
         after XDP_PASS, {:.1} ns):\n\n\
         | path | ns per packet (median) | range | vs XDP_PASS |\n\
         | --- | ---: | ---: | ---: |",
        pass.median
    );
    for path in costs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}x |",
            path.path,
            path.stat.cells(1),
            path.vs_pass
        );
    }
}
