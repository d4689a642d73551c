//! The fleet: how long a grant made on one host takes to admit its source
//! on another, and a revoke made on one to end the grant on another,
//! against the same on a single host, in the fleet lab (three etcd members
//! and two xknock hosts on one bridge, all on this machine).

use std::{path::PathBuf, process::Child};

use lab::{fleet_lab::FleetLab, xknock_bin};
use xknock::{admin::status::Pinned, loader::pins::PinDir};

use super::*;

/// Milliseconds, as percentiles over the tries.
pub(crate) struct Spread {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut samples: Vec<f64>) -> Spread {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Spread {
            median: at(0.5),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

pub(crate) struct FleetTimes {
    pub tries: usize,
    /// From the last knock step sent to a connection admitted: on the host
    /// knocked, on the other host.
    pub grant_here: Spread,
    pub grant_there: Spread,
    /// From `xknock revoke` started to the grant gone from the host's map:
    /// revoked on that host, revoked on the other.
    pub revoke_here: Spread,
    pub revoke_there: Spread,
}

/// One `xknock run` of the fleet lab, killed (its filter detached) when
/// dropped.
struct Host {
    run: Child,
    config: PathBuf,
    pins: PinDir,
    _dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.run.kill());
        drop(self.run.wait());
        drop(
            std::process::Command::new(xknock_bin())
                .args(["detach", "--config"])
                .arg(&self.config)
                .output(),
        );
    }
}

/// Starts `xknock run` on host `i` of `lab`, node `node` of `prefix`.
fn start_host(lab: &FleetLab, i: usize, node: &str, prefix: &str) -> anyhow::Result<Host> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("xknock.toml");
    let pin_dir = format!("/sys/fs/bpf/xkbench-fleet-{}-{node}", std::process::id());
    let endpoints: Vec<String> = lab.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    fs::write(
        &config,
        format!(
            "pin_dir = \"{pin_dir}\"\ninterfaces = [\"{}\"]\n[[rule]]\nname = \"ssh\"\n\
             sequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\nsequence_timeout = \"10s\"\n\
             open_for = \"1h\"\nprotect = [\"tcp:22\"]\n[fleet]\netcd = [{}]\nprefix = \"{prefix}\"\nnode = \"{node}\"\n",
            lab.host_iface(i),
            endpoints.join(", ")
        ),
    )?;
    let run = lab.hosts[i]
        .command(xknock_bin())
        .args(["run", "--events", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Host {
        run,
        config,
        pins: PinDir::new(&pin_dir),
        _dir: dir,
    })
}

/// Waits until `nodes` hosts of `prefix` are announced in etcd.
fn wait_announced(lab: &FleetLab, prefix: &str, nodes: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let out = lab.etcdctl(&[
            "get",
            &format!("{prefix}/nodes/"),
            "--prefix",
            "--keys-only",
        ]);
        let keys = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        if keys >= nodes {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the fleet's hosts did not announce themselves within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Milliseconds from the knock's last step to the first connection host
/// `to` admits (tried every half millisecond; each refusal is the host's
/// RST, at once).
fn grant_time(lab: &FleetLab, knocked: usize, to: usize) -> anyhow::Result<f64> {
    let knocked = ip(lab.host_addr(knocked));
    let target = SocketAddr::new(ip(lab.host_addr(to)), 22);
    lab.client.within(move || -> anyhow::Result<f64> {
        let steps: Vec<PortSpec> = ["tcp:7291", "udp:4728", "tcp:6742"]
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        knock::send_sequence(knocked, &steps, Duration::ZERO)?;
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_millis(5)).is_ok() {
                return Ok(start.elapsed().as_secs_f64() * 1e3);
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "{target} did not admit within 5 s"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    })
}

/// Milliseconds from `xknock revoke --flows` started on `on` to the grant
/// gone from `watched`'s map (read every half millisecond).
fn revoke_time(lab: &FleetLab, hosts: &[Host], on: usize, watched: usize) -> anyhow::Result<f64> {
    let client = key_addr(ip(lab.client_addr()));
    let pinned = Pinned::open(&hosts[watched].pins)?;
    let index = pinned.rule_indexes("ssh")?[0];
    let start = Instant::now();
    let revoke = lab.hosts[on]
        .command(xknock_bin())
        .args(["revoke", lab.client_addr(), "--flows", "--config"])
        .arg(&hosts[on].config)
        .stderr(Stdio::null())
        .spawn()?;
    let elapsed = loop {
        if pinned.maps.grant_of(&client, index)?.is_none() {
            break start.elapsed();
        }
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "the grant stayed 5 s after the revoke"
        );
        std::thread::sleep(Duration::from_micros(500));
    };
    ensure!(
        revoke.wait_with_output()?.status.success(),
        "xknock revoke failed"
    );
    Ok(elapsed.as_secs_f64() * 1e3)
}

/// `tries` grants and revokes each way.
pub(crate) fn fleet_times(tries: usize) -> anyhow::Result<FleetTimes> {
    let mut lab = FleetLab::new(2);
    lab.host_tcp_listener(0, 22);
    lab.host_tcp_listener(1, 22);
    let prefix = format!("/xknock/bench-{}", std::process::id());
    let hosts = vec![
        start_host(&lab, 0, "a", &prefix)?,
        start_host(&lab, 1, "b", &prefix)?,
    ];
    wait_announced(&lab, &prefix, 2)?;
    let (mut grant_here, mut grant_there) = (Vec::new(), Vec::new());
    let (mut revoke_here, mut revoke_there) = (Vec::new(), Vec::new());
    for _ in 0..tries {
        grant_here.push(grant_time(&lab, 0, 0)?);
        // Revoked on A, watched on A: no fleet in the way (B learns it too).
        revoke_here.push(revoke_time(&lab, &hosts, 0, 0)?);
        wait_gone(&hosts[1], &lab)?;
        grant_there.push(grant_time(&lab, 0, 1)?);
        revoke_there.push(revoke_time(&lab, &hosts, 1, 0)?);
        wait_gone(&hosts[1], &lab)?;
    }
    Ok(FleetTimes {
        tries,
        grant_here: Spread::of(grant_here),
        grant_there: Spread::of(grant_there),
        revoke_here: Spread::of(revoke_here),
        revoke_there: Spread::of(revoke_there),
    })
}

/// Waits until `host` holds no grant for the lab's client: every try starts
/// from nothing on both hosts.
fn wait_gone(host: &Host, lab: &FleetLab) -> anyhow::Result<()> {
    let client = key_addr(ip(lab.client_addr()));
    let pinned = Pinned::open(&host.pins)?;
    let index = pinned.rule_indexes("ssh")?[0];
    let start = Instant::now();
    while pinned.maps.grant_of(&client, index)?.is_some() {
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "the other host kept the revoked grant 5 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

pub(crate) fn render(md: &mut String, times: &FleetTimes) {
    let _ = writeln!(
        md,
        "\n## Fleet\n\nTwo xknock hosts and a three-member etcd cluster (Debian's etcd-server 3.4, \
         in network namespaces on one bridge, all on this machine), {} tries each. A grant: from the \
         client's last knock step to the first TCP connection the host admits (tried every 0.5 ms). \
         A revoke: from `xknock revoke --flows` started to the grant gone from the host's map (read \
         every 0.5 ms; the command's own start-up is in both rows).\n\n\
         | what | median ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |",
        times.tries
    );
    for (what, spread) in [
        ("grant, on the host knocked", &times.grant_here),
        ("grant, on the other host", &times.grant_there),
        ("revoke, on the host revoked on", &times.revoke_here),
        ("revoke, on the other host", &times.revoke_there),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {:.2} | {:.2} | {:.2} |",
            spread.median, spread.p99, spread.max
        );
    }
}
