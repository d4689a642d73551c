//! First-step survival: clients knocking while a spoofed flood of first
//! steps (random sources, the first knock port) churns `FIRST_STEPS`. A
//! client's first step is kept in a bucket of that table until its second
//! step moves it on; a bucket keeps its `FIRST_STEP_WAYS` (W) newest
//! records, so the client's survives the delay d between its steps unless
//! W newer first steps land in its bucket meanwhile. With N records (N / W
//! buckets) and R first steps a second from random sources, that count is
//! Poisson of mean W·R·d/N, and the odds are P(Poisson(W·R·d/N) < W)
//! (`survival_odds`). Counted here: of 100 clients, each from its own
//! address, how many open the protected port, at each table size and
//! delay, with and without flood, beside those odds at the R measured.
//!
//! The flood comes over a veth pair of its own, the filter attached to both
//! server ends (one filter, one table): the generator sends at its limit,
//! faster than the filter takes, and a veth ring that overflows drops what
//! is in it. On the clients' own link, what they lose is what the table
//! displaced, not what a full ring dropped.
//!
//! The clients send from CPU 1, where the flood's link is polled, so their
//! packets reach the filter on the CPU the flood does, as a NIC spreading a
//! flood from random sources over every queue would have it; the table is
//! one array shared by every CPU, so the CPU changes nothing in it.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::*;

/// Clients per row, each with an address of its own.
const CLIENTS: u8 = 100;
/// The clients' addresses: 198.18.1.1 to .100, beside the lab's own.
const CLIENT_NET: [u8; 3] = [198, 18, 1];
/// The rows: a table size (`first_step_entries`) and the delays between
/// steps it is measured at, in ms (`xknock knock` waits 20 ms by default).
/// The default size at the delays clients use and far past them; the small
/// table at delays that take the odds from about 100% to about 0 whether
/// the filter takes 1 M first steps a second or 3.5 M (as here, quiet):
/// 100, 93, 38, 0, 0% at 3.5 M; 100, 100, 100, 73, 8% at 1 M.
const ROWS: [(u32, &[u64]); 2] = [
    (1 << 20, &[0, 20, 100, 250, 1000]),
    (SMALL_FIRST_STEPS, &[5, 10, 20, 50, 100]),
];
/// Spoofed SYNs per call of the generator, which sends them at its limit;
/// each call's set-up (about 20 ms here) is a pause in the flood, so
/// calls are large (under half a second each).
const BURST: u32 = 2_000_000;
/// Flooding before the clients start, so the flood is at its rate when
/// they knock (a bucket keeps its newest records whether or not it was
/// full, so the odds do not depend on the table being full).
const WARM_UP: Duration = Duration::from_millis(400);
/// Clients start this far apart.
const STAGGER: Duration = Duration::from_millis(2);
/// Long enough for one retransmitted SYN (after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);

/// One row: clients opened out of `CLIENTS` at one table size and delay.
pub(crate) struct SurvivalRow {
    /// Records of the table (`first_step_entries` as the loader rounds it).
    pub records: u32,
    pub delay_ms: u64,
    /// None without flood (the control).
    pub flood: Option<FloodRate>,
    pub opened: usize,
}

/// One row's flood: sent over its whole time, counted while the clients
/// knocked.
#[derive(Clone, Copy)]
pub(crate) struct FloodRate {
    /// Spoofed SYNs the generator sent a second.
    pub sent: f64,
    /// Of the flood's time, the share spent inside the generator's calls
    /// (the rest is their set-up, when nothing is sent).
    pub sending: f64,
    /// Packets xknock stopped a second (its `drop_*` counters): the first
    /// steps that reached the table, R in W·R·d/N.
    pub counted: f64,
}

pub(crate) struct Survival {
    pub rows: Vec<SurvivalRow>,
}

fn client_addr(n: u8) -> Ipv4Addr {
    let [a, b, c] = CLIENT_NET;
    Ipv4Addr::new(a, b, c, n)
}

/// The odds that a first step survives `delay_s` in a `FIRST_STEPS` of
/// `records` (rounded as the loader rounds them: whole buckets, a power of
/// two) while `rate` first steps a second from random sources churn it:
/// fewer than `FIRST_STEP_WAYS` of them land in its bucket meanwhile,
/// P(Poisson(W·rate·delay/records) < W).
pub(crate) fn survival_odds(rate: f64, delay_s: f64, records: u32) -> f64 {
    let ways = knock_common::FIRST_STEP_WAYS;
    let mean = ways as f64 * rate * delay_s / f64::from(first_step_records(records));
    // e^-mean · Σ mean^k / k! for k below W, term by term.
    let mut term = (-mean).exp();
    let mut odds = 0.0;
    for k in 0..ways {
        odds += term;
        term *= mean / (k + 1) as f64;
    }
    odds.min(1.0)
}

/// Every row: per table size, per delay, without flood and with.
pub(crate) fn first_step_survival() -> anyhow::Result<Survival> {
    let lab = Lab::with_client_program(None);
    lab.tcp_listener(22);
    for n in 1..=CLIENTS {
        let addr = format!("{}/24", client_addr(n));
        run_in(
            &lab.client,
            "ip",
            &["addr", "add", &addr, "dev", &lab.client_if],
        )?;
    }
    let net = format!("{}/24", client_addr(0));
    run_in(
        &lab.server,
        "ip",
        &["route", "add", &net, "dev", &lab.server_if],
    )?;
    // The flood's own link, gone with the namespaces.
    let flood_link = (format!("{}f", lab.server_if), format!("{}f", lab.client_if));
    run_in(
        &lab.client,
        "ip",
        &[
            "link",
            "add",
            &flood_link.1,
            "type",
            "veth",
            "peer",
            "name",
            &flood_link.0,
            "netns",
            &lab.server.name,
        ],
    )?;
    run_in(&lab.client, "ip", &["link", "set", &flood_link.1, "up"])?;
    run_in(&lab.server, "ip", &["link", "set", &flood_link.0, "up"])?;
    // With GRO on, veth keeps its NAPI (and the thread `separate_cpus`
    // pins to CPU 1) while each row attaches a filter of its own.
    run_in(&lab.server, "ethtool", &["-K", &flood_link.0, "gro", "on"])?;
    separate_cpus_of(&lab.server, &flood_link.0)?;
    let template = flood_template_on(&lab, (&flood_link.0, &flood_link.1), FIRST_STEP_PORT);
    let mut rows = Vec::new();
    for (entries, delays) in ROWS {
        for &delay_ms in delays {
            for flooded in [false, true] {
                eprintln!(
                    "bench: survival, first_step_entries {entries}, delay {delay_ms} ms, {}",
                    if flooded { "flood" } else { "no flood" }
                );
                let row = survival_row(&lab, &flood_link, &template, entries, delay_ms, flooded)?;
                eprintln!(
                    "bench:   opened {}/{CLIENTS}{}",
                    row.opened,
                    row.flood
                        .map(|f| format!(
                            ", {:.0} sent/s ({:.0}% of the time sending), {:.0} counted/s",
                            f.sent,
                            f.sending * 100.0,
                            f.counted
                        ))
                        .unwrap_or_default()
                );
                rows.push(row);
            }
        }
    }
    Ok(Survival { rows })
}

/// Attaches a fresh filter (no state from the row before), floods if
/// `flooded`, and lets the clients knock and connect.
fn survival_row(
    lab: &Lab,
    flood_link: &(String, String),
    template: &[u8],
    entries: u32,
    delay_ms: u64,
    flooded: bool,
) -> anyhow::Result<SurvivalRow> {
    let config = bench_config(&format!(
        "{SILENT}[limits]\nfirst_step_entries = {entries}\n"
    ));
    let ifaces = [lab.server_if.clone(), flood_link.0.clone()];
    let filter = lab.server.within(move || -> anyhow::Result<Filter> {
        let mut filter = Filter::load(&config)?;
        for iface in &ifaces {
            filter.attach(iface, AttachMode::Native)?;
        }
        Ok(filter)
    })?;
    let delay = Duration::from_millis(delay_ms);
    if !flooded {
        each_client(&lab.client, delay, knock)?;
        let opened = each_client(&lab.client, delay, connect)?;
        return Ok(SurvivalRow {
            records: first_step_records(entries),
            delay_ms,
            flood: None,
            opened,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| -> anyhow::Result<SurvivalRow> {
        // Even if this thread panics, the generator stops (the scope waits
        // for it).
        let _stop = StopOnDrop(Arc::clone(&stop));
        let flood = {
            let stop = Arc::clone(&stop);
            let template = template.to_vec();
            scope.spawn(move || {
                with_generator(
                    &lab.client,
                    flood_link.1.clone(),
                    "xdp_flood",
                    template,
                    move |send| flat_out(send, &stop),
                )
            })
        };
        // Whatever happens to the clients, the generator stops. R is
        // counted while the clients knock, and only then.
        let knocked = (|| -> anyhow::Result<f64> {
            std::thread::sleep(WARM_UP);
            let (before, start) = (stopped(&filter)?, Instant::now());
            each_client(&lab.client, delay, knock)?;
            let counted = stopped(&filter)? - before;
            Ok(counted as f64 / start.elapsed().as_secs_f64())
        })();
        stop.store(true, Ordering::Relaxed);
        let generated = flood
            .join()
            .map_err(|_| anyhow::anyhow!("the generator panicked"))?;
        let counted = knocked?;
        let (frames, seconds, sending) = generated?;
        // The grants are made: the connections need no flood to tell.
        let opened = each_client(&lab.client, delay, connect)?;
        Ok(SurvivalRow {
            records: first_step_records(entries),
            delay_ms,
            flood: Some(FloodRate {
                sent: frames as f64 / seconds,
                sending: sending / seconds,
                counted,
            }),
            opened,
        })
    })
}

/// Tells the generator to stop when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Sends `BURST`s until `stop`; returns the frames sent, the seconds it
/// took and the seconds spent in the calls that sent them (timed by the
/// kernel's test run, which excludes its set-up).
fn flat_out(
    send: &dyn Fn(u32) -> anyhow::Result<Duration>,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, f64, f64)> {
    let start = Instant::now();
    let (mut frames, mut sending) = (0u64, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        sending += send(BURST)?;
        frames += u64::from(BURST);
    }
    Ok((frames, start.elapsed().as_secs_f64(), sending.as_secs_f64()))
}

/// Runs `work` for every client, each on a thread of its own with the
/// client's address and `delay`, the clients `STAGGER` apart; returns how
/// many answered true.
fn each_client(
    client: &Netns,
    delay: Duration,
    work: fn(Ipv4Addr, Duration) -> anyhow::Result<bool>,
) -> anyhow::Result<usize> {
    client.within(move || -> anyhow::Result<usize> {
        std::thread::scope(|scope| {
            let clients: Vec<_> = (1..=CLIENTS)
                .map(|n| {
                    scope.spawn(move || {
                        // On the CPU whose NAPI thread takes the flood: see
                        // the module's summary.
                        pin_to_cpu(1)?;
                        std::thread::sleep(STAGGER * u32::from(n - 1));
                        work(client_addr(n), delay)
                    })
                })
                .collect();
            let mut yes = 0;
            for client in clients {
                let answer = client
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??;
                yes += usize::from(answer);
            }
            Ok(yes)
        })
    })
}

/// A socket of `kind` bound to `source`.
fn bound(source: Ipv4Addr, kind: Type, protocol: Protocol) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, kind, Some(protocol))?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))?;
    Ok(socket)
}

/// One SYN from `source`, as `xknock knock` sends it: a non-blocking
/// connect, closed at once (nothing more is sent from SYN-SENT).
fn syn(source: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let socket = bound(source, Type::STREAM, Protocol::TCP)?;
    socket.set_nonblocking(true)?;
    let server = SockAddr::from(SocketAddrV4::new(SERVER.parse()?, port));
    match socket.connect(&server) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn datagram(source: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let socket = bound(source, Type::DGRAM, Protocol::UDP)?;
    let server = SockAddr::from(SocketAddrV4::new(SERVER.parse()?, port));
    socket.send_to(b"xknock", &server)?;
    Ok(())
}

/// The bench rule's sequence (tcp:7291, udp:4728, tcp:6742) from `source`,
/// `delay` between steps.
fn knock(source: Ipv4Addr, delay: Duration) -> anyhow::Result<bool> {
    syn(source, FIRST_STEP_PORT)?;
    std::thread::sleep(delay);
    datagram(source, 4728)?;
    std::thread::sleep(delay);
    syn(source, 6742)?;
    Ok(true)
}

/// Whether tcp:22 opens to `source`.
fn connect(source: Ipv4Addr, _: Duration) -> anyhow::Result<bool> {
    let socket = bound(source, Type::STREAM, Protocol::TCP)?;
    let server = SockAddr::from(SocketAddrV4::new(SERVER.parse()?, 22));
    Ok(socket.connect_timeout(&server, CONNECT_TIMEOUT).is_ok())
}

/// The section of the report.
pub(crate) fn render(md: &mut String, survival: &Survival) {
    let ways = knock_common::FIRST_STEP_WAYS;
    let _ = writeln!(
        md,
        "\n## First-step survival under a spoofed flood\n\n\
         {CLIENTS} clients, each from its own address, knock the rule's \
         sequence (tcp:7291, udp:4728, tcp:6742) with a delay d between steps \
         and then connect to tcp:22 from that address, while spoofed SYNs \
         from random sources flood the first knock port at the generator's \
         limit (`conceal = \"drop\"`). The flood comes over a veth pair of \
         its own, the one filter attached to both, so a ring the flood \
         overflows drops no client packet: what the clients lose is what the \
         table displaced. A first step waits in `FIRST_STEPS` until the second \
         step moves it on: N records (`first_step_entries`, rounded up to a \
         power of two) in N/{ways} buckets of {ways}, one array shared by every \
         CPU. A keyed hash of the source picks the bucket, and a new first step \
         takes a free way or displaces the bucket's oldest record, so a bucket \
         holds its {ways} newest first steps: a client's survives d unless \
         {ways} newer ones land in its bucket meanwhile. At R first steps a \
         second from random sources, that count is Poisson of mean \
         {ways}·R·d/N, and the odds of survival are P(Poisson({ways}·R·d/N) < {ways}): \
         \"predicted\" is that, in % of the clients, at the R measured. The \
         odds fall smoothly, not off a cliff, and a small table loses clients \
         at a small R·d/N. R is what xknock counted (every packet it dropped) \
         while the clients knocked, not what was sent: the rest never reached \
         the filter. Each call of the generator sends 2M frames after a set-up \
         of about 20 ms, when nothing is sent (the share of the time sending \
         is in the table). The flood stops before the clients connect (a \
         grant, once made, no flood displaces). The clients send from the CPU \
         that takes the flood.\n\n\
         | N (records) | d | flood sent (SYN/s; share of the time sending) | R, counted by xknock (SYN/s) | R·d/N | predicted (%) | opened of {CLIENTS} |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in &survival.rows {
        let (sent, counted, ratio, predicted) = match row.flood {
            None => (
                "none".to_owned(),
                "-".to_owned(),
                "0".to_owned(),
                "100".to_owned(),
            ),
            Some(flood) => {
                let delay_s = row.delay_ms as f64 / 1e3;
                (
                    format!("{:.2} M; {:.0}%", flood.sent / 1e6, flood.sending * 100.0),
                    format!("{:.2} M", flood.counted / 1e6),
                    format!("{:.2}", flood.counted * delay_s / f64::from(row.records)),
                    format!(
                        "{:.0}",
                        100.0 * survival_odds(flood.counted, delay_s, row.records)
                    ),
                )
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} ms | {sent} | {counted} | {ratio} | {predicted} | {} |",
            row.records, row.delay_ms, row.opened
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odds_are_those_of_fewer_than_a_bucket_of_newer_steps() {
        // No flood, or no wait: every first step survives.
        assert_eq!(survival_odds(0.0, 1.0, 65_536), 1.0);
        assert_eq!(survival_odds(1e6, 0.0, 65_536), 1.0);
        // A mean of 8 newer steps in the bucket: P(Poisson(8) < 8).
        let at_eight = survival_odds(1e6, 65_536.0 / 1e6, 65_536);
        assert!((at_eight - 0.452_960).abs() < 1e-5, "{at_eight}");
        // A mean of 1: P(Poisson(1) < 8) = e^-1 · Σ 1/k! (k < 8).
        let at_one = survival_odds(1e6, 65_536.0 / 8e6, 65_536);
        assert!((at_one - 0.999_990).abs() < 1e-5, "{at_one}");
        // Far past the table's turnover, none.
        assert!(survival_odds(1e6, 1.0, 65_536) < 1e-9);
        // Odds fall as the wait grows.
        let odds: Vec<f64> = [5.0, 20.0, 50.0, 100.0, 250.0]
            .iter()
            .map(|ms| survival_odds(1e6, ms / 1e3, 65_536))
            .collect();
        assert!(odds.windows(2).all(|w| w[0] > w[1]), "{odds:?}");
    }

    #[test]
    fn records_are_rounded_as_the_loader_rounds_them() {
        // 50,000 records are 65,536 once rounded to a power of two.
        assert_eq!(
            survival_odds(1e6, 0.05, 50_000),
            survival_odds(1e6, 0.05, 65_536)
        );
        assert_eq!(first_step_records(1 << 20), 1 << 20);
    }

    #[test]
    fn the_first_rows_are_at_the_default_size() {
        assert_eq!(ROWS[0].0, bench_config(SILENT).first_step_entries);
    }
}
