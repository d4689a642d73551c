//! `xknock trace ADDR`: every decision the kernel makes about one source,
//! streamed through aya-log.
//!
//! The filter that normally runs carries no trace code, so tracing costs
//! nothing while no trace runs. A trace loads the traced object (the same
//! filter, logging decisions about `ADDR`) over the pinned state and the
//! configuration in force, swaps it onto every pinned link, and when it ends
//! puts back the program the configuration was loaded with, on the links
//! that still run the traced one (a reload or a restart meanwhile has
//! already replaced it).

use std::{net::IpAddr, os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;
use knock_common::addr_words;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    daemon::generations::CHANGE_PATIENCE,
    loader::maps::key_addr,
    loader::pins::{PinDir, PinError},
    loader::{
        PROGRAM_PIN, TRACE_SOURCE, TRACED_OBJECT, read_instance, set_tail_calls, set_trace_program,
        table,
    },
};

/// The traced program, on the links it was swapped onto.
struct Traced {
    ebpf: Ebpf,
    program_id: u32,
}

/// Prints each aya-log record as a line on stdout.
struct Printer;

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    #[expect(
        clippy::print_stdout,
        reason = "trace's output is these lines on stdout"
    )]
    fn log(&self, record: &log::Record<'_>) {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        println!("{time} {}", record.args());
    }

    fn flush(&self) {}
}

/// Traces `addr` until SIGINT or SIGTERM, or for `duration`.
pub fn trace(pins: &PinDir, addr: IpAddr, duration: Option<Duration>) -> anyhow::Result<()> {
    pins.require_filter()?;
    let mut traced = {
        let _change = pins.change(CHANGE_PATIENCE)?;
        swap_in(pins, addr)?
    };
    let ifaces: Vec<String> = pins.links()?.into_iter().map(|l| l.iface).collect();
    log::info!(
        "tracing {addr} on {} (program {}); Ctrl-C ends the trace and puts the filter's own program back",
        ifaces.join(", "),
        traced.program_id
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let streamed = runtime.block_on(stream(&mut traced, pins, duration));
    let _change = pins.change(CHANGE_PATIENCE)?;
    let restored = swap_out(pins, traced.program_id)?;
    if restored > 0 {
        log::info!("trace ended; the filter's own program is back on {restored} link(s)");
    }
    streamed
}

#[expect(clippy::expect_used, reason = "every map `Maps` holds has a pin path")]
fn swap_in(pins: &PinDir, addr: IpAddr) -> anyhow::Result<Traced> {
    let instance = read_instance(pins)?.ok_or_else(|| PinError::NoFilter(pins.root().into()))?;
    let mut loader = EbpfLoader::new();
    // The pinned state and configuration; the traced object fills slots of
    // its own with its own programs, which log too.
    for row in table::in_maps() {
        let path = pins
            .pin(row, instance.generation)
            .expect("maps of Maps are pinned");
        loader.map_pin_path(row.name, path.clone());
        // The configuration sized it: the traced object asks for the size
        // the pinned one has.
        if row.limit.is_some() {
            let info = MapInfo::from_pin(&path).with_context(|| format!("{}", path.display()))?;
            loader.map_max_entries(row.name, info.max_entries());
        }
    }
    let source = addr_words(&key_addr(addr));
    loader.override_global(TRACE_SOURCE, &source, true);
    let mut ebpf = loader
        .load(TRACED_OBJECT)
        .context("loading the traced program over the pinned filter")?;
    // The programs it tail-calls first: the logging one, in the slot the
    // filter hands every verdict to, and its own knock, echo and
    // concealment programs (this process holds their slots; if it dies,
    // they empty and the traced filter judges every packet as no knock
    // until a reload or restart puts the filter's own program back).
    set_trace_program(&mut ebpf)?;
    set_tail_calls(&mut ebpf)?;
    let program: &mut Xdp = ebpf
        .program_mut(knock_common::PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the traced object has no filter program"))?
        .try_into()?;
    program
        .load()
        .context("the kernel refused the traced program")?;
    let program_id = program.info()?.id();
    for link in pins.links()? {
        let pinned = PinnedLink::from_pin(&link.path)
            .with_context(|| format!("the pinned link of {}", link.iface))?;
        program
            .attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)
            .with_context(|| format!("swapping the traced program onto {}", link.iface))?;
    }
    Ok(Traced { ebpf, program_id })
}

/// Puts the program of the configuration in force back on every link that
/// still runs `traced`; returns how many.
fn swap_out(pins: &PinDir, traced: u32) -> anyhow::Result<usize> {
    let instance = read_instance(pins)?.ok_or_else(|| PinError::NoFilter(pins.root().into()))?;
    let path = pins.generation(instance.generation).join(PROGRAM_PIN);
    let mut own = Xdp::from_pin(&path, XdpAttachType::Interface)
        .with_context(|| format!("the filter's program {}", path.display()))?;
    let mut restored = 0;
    for link in pins.links()? {
        let link = FdLink::from(PinnedLink::from_pin(&link.path)?);
        if link.info()?.program_id() != traced {
            continue;
        }
        own.attach_to_link(XdpLink::try_from(link)?)?;
        restored += 1;
    }
    Ok(restored)
}

/// Whether any pinned link still runs `traced`.
fn still_traced(pins: &PinDir, traced: u32) -> bool {
    pins.links().is_ok_and(|links| {
        links.iter().any(|link| {
            PinnedLink::from_pin(&link.path)
                .map(FdLink::from)
                .and_then(|link| link.info())
                .is_ok_and(|info| info.program_id() == traced)
        })
    })
}

async fn stream(
    traced: &mut Traced,
    pins: &PinDir,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let logger = aya_log::EbpfLogger::init_with_logger(&mut traced.ebpf, Printer)
        .context("reading the traced program's log")?;
    let fd = logger.as_raw_fd();
    // SAFETY: the logger owns its ring buffer's fd and keeps it open,
    // unchanged, for as long as the AsyncFd holds it.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .with_context(|| format!("polling the trace ring buffer (fd {fd})"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            guard = logger.readable_mut() => {
                let mut guard = guard.context("waiting for trace records")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = check.tick() => {
                if !still_traced(pins, traced.program_id) {
                    log::info!("the filter was reloaded or restarted; the trace ended");
                    return Ok(());
                }
            }
            _ = &mut deadline => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}
