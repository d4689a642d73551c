//! `run --metrics ADDR:PORT`: the filter's counters in Prometheus's text
//! exposition format at `/metrics`, read from the pins at each scrape.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    admin::status::{Status, StatusError},
    config::Config,
    fleet::FleetStatus,
    loader::pins::PinDir,
};

/// Reloads by result, since this process started, and the one-time files
/// of the configuration in place, which each scrape reads.
#[derive(Debug, Default)]
pub struct Reloads {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// The one-time rules of the configuration in place, and their files.
    one_time: Mutex<Vec<(String, PathBuf)>>,
}

impl Reloads {
    pub fn record(&self, ok: bool) {
        let counter = if ok { &self.succeeded } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Follows `config`, the configuration in place: its one-time rules'
    /// files, whose lines left each scrape counts.
    pub fn follow(&self, config: &Config) {
        let files = config
            .rules
            .iter()
            .filter_map(|rule| Some((rule.name.clone(), rule.one_time()?.path.clone())))
            .collect();
        if let Ok(mut one_time) = self.one_time.lock() {
            *one_time = files;
        }
    }

    /// Unused lines of each one-time rule's file, as read now.
    fn one_time_lines_left(&self) -> Vec<(String, f64)> {
        let files = self.one_time.lock().map(|f| f.clone()).unwrap_or_default();
        files
            .into_iter()
            .filter_map(|(rule, path)| {
                let left = crate::config::one_time::unused_lines(&path).ok()?;
                Some((label("rule", &rule), left.len() as f64))
            })
            .collect()
    }
}

/// One metric family: its HELP, TYPE and samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn label(key: &str, value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{key}=\"{escaped}\"}}")
}

/// The exposition of `status`, `reloads` and the fleet's session, if any.
pub fn render(status: &Status, reloads: &Reloads, fleet: Option<&FleetStatus>) -> String {
    let mut out = String::new();
    let verdicts: Vec<(String, f64)> = status
        .verdicts
        .iter()
        .map(|(reason, n)| (label("reason", reason), *n as f64))
        .collect();
    family(
        &mut out,
        "xknock_verdicts_total",
        "counter",
        "Packets the XDP filter decided, by verdict and reason.",
        &verdicts,
    );
    let answers: Vec<(String, f64)> = status
        .answers
        .iter()
        .map(|(answer, n)| (label("answer", answer), *n as f64))
        .collect();
    family(
        &mut out,
        "xknock_concealment_total",
        "counter",
        "What concealment did with packets the filter stopped.",
        &answers,
    );
    family(
        &mut out,
        "xknock_grants",
        "gauge",
        "Live grants.",
        &[(String::new(), status.grants.len() as f64)],
    );
    family(
        &mut out,
        "xknock_prefix_grants",
        "gauge",
        "Live grants that admit a prefix of the knocking address (grant_scope), by its length.",
        &prefix_grants(status),
    );
    family(
        &mut out,
        "xknock_admitted_flows",
        "gauge",
        "Connections admitted under a grant and not yet idle.",
        &[(String::new(), status.admitted_flows as f64)],
    );
    let entries: Vec<(String, f64)> = status
        .maps
        .iter()
        .map(|(map, o)| (label("map", &map.to_lowercase()), f64::from(o.entries)))
        .collect();
    family(
        &mut out,
        "xknock_map_entries",
        "gauge",
        "Entries in each bounded state map.",
        &entries,
    );
    let limits: Vec<(String, f64)> = status
        .maps
        .iter()
        .map(|(map, o)| (label("map", &map.to_lowercase()), f64::from(o.max_entries)))
        .collect();
    family(
        &mut out,
        "xknock_map_max_entries",
        "gauge",
        "The configured size of each bounded state map.",
        &limits,
    );
    family(
        &mut out,
        "xknock_events_lost_total",
        "counter",
        "Events the kernel could not queue because the ring buffer was full.",
        &[(String::new(), status.events_lost as f64)],
    );
    family(
        &mut out,
        "xknock_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP) by result, since this process started.",
        &[
            (
                label("result", "success"),
                reloads.succeeded.load(Ordering::Relaxed) as f64,
            ),
            (
                label("result", "failure"),
                reloads.failed.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    family(
        &mut out,
        "xknock_configuration_generation",
        "gauge",
        "How many configurations the pinned filter has loaded.",
        &[(String::new(), status.generation as f64)],
    );
    let (gone, attached): (Vec<_>, Vec<_>) = status.interfaces.iter().partition(|i| i.gone);
    family(
        &mut out,
        "xknock_interfaces",
        "gauge",
        "Interfaces the filter runs on.",
        &[(String::new(), attached.len() as f64)],
    );
    family(
        &mut out,
        "xknock_interfaces_gone",
        "gauge",
        "Interfaces the filter was attached to that are gone (their pinned link holds nothing).",
        &[(String::new(), gone.len() as f64)],
    );
    family(
        &mut out,
        "xknock_one_time_lines_left",
        "gauge",
        "Unused lines of each one-time rule's sequences_file (0: the rule opens nothing).",
        &reloads.one_time_lines_left(),
    );
    if let Some(fleet) = fleet {
        render_fleet(&mut out, fleet);
    }
    out
}

/// The fleet's families: whether it is followed, how far, how late.
fn render_fleet(out: &mut String, fleet: &FleetStatus) {
    let one = |value: f64| [(String::new(), value)];
    family(
        out,
        "xknock_fleet_connected",
        "gauge",
        "Whether this host follows its fleet in etcd (1) or enforces alone (0).",
        &one(f64::from(u8::from(fleet.connected.load(Ordering::Relaxed)))),
    );
    family(
        out,
        "xknock_fleet_revision",
        "gauge",
        "The last etcd revision of the fleet's keys this host has seen.",
        &one(fleet.revision.load(Ordering::Relaxed) as f64),
    );
    family(
        out,
        "xknock_fleet_lag_seconds",
        "gauge",
        "From another host's last grant to its arrival here.",
        &one(fleet.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0),
    );
    family(
        out,
        "xknock_fleet_grants_published_total",
        "counter",
        "Grants of this host published to the fleet.",
        &one(fleet.published.load(Ordering::Relaxed) as f64),
    );
    family(
        out,
        "xknock_fleet_grants_planted_total",
        "counter",
        "Grants of the fleet put in this host's kernel.",
        &one(fleet.planted.load(Ordering::Relaxed) as f64),
    );
}

/// Answers scrapes on a thread of its own until the process ends, so a
/// reload or a burst of events never keeps a scrape waiting.
pub fn spawn(
    listener: std::net::TcpListener,
    pins: PinDir,
    reloads: Arc<Reloads>,
    fleet: Option<Arc<FleetStatus>>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("xknock-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, pins, reloads, fleet).await,
                    Err(error) => log::error!("metrics: {error}"),
                }
            });
        })?;
    Ok(())
}

async fn serve(
    listener: TcpListener,
    pins: PinDir,
    reloads: Arc<Reloads>,
    fleet: Option<Arc<FleetStatus>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let pins = pins.clone();
        let reloads = Arc::clone(&reloads);
        let fleet = fleet.clone();
        tokio::spawn(async move {
            drop(answer(stream, &pins, &reloads, fleet.as_deref()).await);
        });
    }
}

/// Largest request head read.
const MAX_REQUEST: usize = 8192;

async fn answer(
    mut stream: TcpStream,
    pins: &PinDir,
    reloads: &Reloads,
    fleet: Option<&FleetStatus>,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match Status::read(pins) {
            Ok(status) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(&status, reloads, fleet),
            ),
            Err(error) => unavailable(&error),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "see /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn unavailable(error: &StatusError) -> (&'static str, &'static str, String) {
    (
        "503 Service Unavailable",
        "text/plain",
        format!("cannot read the filter: {error}\n"),
    )
}

/// Live grants of prefixes, by family and length (none: no sample).
fn prefix_grants(status: &Status) -> Vec<(String, f64)> {
    let mut by_len: BTreeMap<(&str, u8), usize> = BTreeMap::new();
    for grant in &status.grants {
        if let Some(len) = grant.prefix_len {
            let family = if grant.source.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            };
            *by_len.entry((family, len)).or_default() += 1;
        }
    }
    by_len
        .into_iter()
        .map(|((family, len), n)| {
            (
                format!("{{family=\"{family}\",prefix_len=\"{len}\"}}"),
                n as f64,
            )
        })
        .collect()
}
