//! First-step survival: clients knocking while a spoofed flood of first
//! steps (random sources, the first knock port) fills `FIRST_STEPS`. A
//! client's first step is kept in that LRU table until its second step
//! promotes it; each spoofed first step that arrives meanwhile is one more
//! insert, so the client's entry survives while fewer than
//! `first_step_entries` (N) others arrive in the delay d between its
//! steps: at a flood of R first steps a second, while R·d < N. Counted
//! here: of 100 clients, each from its own address, how many open the
//! protected port, at each delay and table size, with and without flood.
//!
//! The flood comes over a veth pair of its own, the filter attached to both
//! server ends (one filter, one table): the generator sends at its limit,
//! faster than the filter takes, and a veth ring that overflows drops what
//! is in it. On the clients' own link, what they lose is what the table
//! evicted, not what a full ring dropped.
//!
//! The clients send from CPU 1, where the flood's link is polled, so their
//! packets reach the filter on the CPU the flood does, as a NIC spreading a
//! flood from random sources over every queue would have it. The kernel's
//! LRU keeps each CPU's newest entries on a list of that CPU's own until
//! the CPU next needs free entries: a first step taken on a CPU no flood
//! reaches is not evicted by it (with the clients on either CPU, 51 to 82
//! of 100 got through at 5 to 43 times the table's turnover).

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
/// The table sizes: the default and a small one.
const TABLE_SIZES: [u32; 2] = [65_536, 4_096];
/// Delays between steps, in ms (`xknock knock` waits 20 ms by default).
const DELAYS_MS: [u64; 7] = [0, 5, 20, 50, 100, 250, 1000];
/// Spoofed SYNs per call of the generator, which sends them at its limit;
/// each call's set-up (about 20 ms here) is a pause in the flood, so
/// calls are large (under half a second each).
const BURST: u32 = 2_000_000;
/// Flooding before the clients start, so the table is full and every
/// spoofed first step evicts one.
const WARM_UP: Duration = Duration::from_millis(400);
/// Clients start this far apart.
const STAGGER: Duration = Duration::from_millis(2);
/// Long enough for one retransmitted SYN (after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);

/// One row: clients opened out of `CLIENTS` at one table size and delay.
pub(crate) struct SurvivalRow {
    pub entries: u32,
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
    /// steps that reached the table, R in R·d/N.
    pub counted: f64,
}

pub(crate) struct Survival {
    pub rows: Vec<SurvivalRow>,
}

fn client_addr(n: u8) -> Ipv4Addr {
    let [a, b, c] = CLIENT_NET;
    Ipv4Addr::new(a, b, c, n)
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
    for entries in TABLE_SIZES {
        for delay_ms in DELAYS_MS {
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
    let stopped = |filter: &Filter| -> anyhow::Result<u64> {
        Ok(filter
            .maps()
            .counters()?
            .iter()
            .filter(|(name, _)| name.starts_with("drop_"))
            .map(|(_, count)| count)
            .sum())
    };
    let delay = Duration::from_millis(delay_ms);
    if !flooded {
        each_client(&lab.client, delay, knock)?;
        let opened = each_client(&lab.client, delay, connect)?;
        return Ok(SurvivalRow {
            entries,
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
            entries,
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
         table evicted. A first step waits in `FIRST_STEPS`, an LRU table of \
         N = `first_step_entries`, until the second step moves it on; every \
         spoofed first step is one more insert. So a client's first step \
         survives while fewer than N others arrive within d: at R first \
         steps a second, while R·d < N. With LRU the odds are a cliff, not \
         an exponential: every client gets through while R·d/N is below 1, \
         none once it is above (the kernel's LRU evicts in batches and only \
         roughly in order, so the edge is not sharp to the packet). R is what \
         xknock counted (every packet it dropped) while the clients knocked, \
         not what was sent: the rest never reached the filter. Each call of \
         the generator sends 2M frames after a set-up of about 20 ms, \
         when nothing is sent (the share of the time sending is in the \
         table). The flood stops \
         before the clients connect (a grant, once made, no flood evicts). \
         The clients send from the CPU that takes the flood: a first step \
         taken on a CPU the flood does not reach sits on that CPU's own list \
         of the kernel's LRU, out of the flood's reach.\n\n\
         | N (first_step_entries) | d | flood sent (SYN/s; share of the time sending) | R, counted by xknock (SYN/s) | R·d/N | opened of {CLIENTS} |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in &survival.rows {
        let (sent, counted, ratio) = match row.flood {
            None => ("none".to_owned(), "-".to_owned(), "0".to_owned()),
            Some(flood) => (
                format!("{:.2} M; {:.0}%", flood.sent / 1e6, flood.sending * 100.0),
                format!("{:.2} M", flood.counted / 1e6),
                format!(
                    "{:.2}",
                    flood.counted * row.delay_ms as f64 / 1e3 / f64::from(row.entries)
                ),
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} ms | {sent} | {counted} | {ratio} | {} |",
            row.entries, row.delay_ms, row.opened
        );
    }
}
