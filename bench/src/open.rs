//! Time to open: from the start of a knock to the first TCP connection,
//! xknock against knockd with iptables in the same veth topology.

use super::*;

pub(crate) struct OpenTimes {
    pub xknock: Stat,
    pub knockd: Stat,
}

/// Milliseconds from the start of a knock to the first TCP connection to the
/// protected port, measured on the client: the knock is sent in-process, then
/// a connection is tried every 5 ms until one opens.
pub(crate) fn open_time(lab: &Lab) -> anyhow::Result<f64> {
    let server = ip(SERVER);
    lab.client.within(move || -> anyhow::Result<f64> {
        let steps: Vec<PortSpec> = ["tcp:7291", "udp:4728", "tcp:6742"]
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        let target = SocketAddr::new(server, 22);
        let start = Instant::now();
        knock::send_sequence(server, &steps, Duration::ZERO)?;
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_millis(5)) {
                Ok(_) => return Ok(start.elapsed().as_secs_f64() * 1e3),
                Err(error) if start.elapsed() > Duration::from_secs(5) => {
                    anyhow::bail!("port 22 did not open within 5 s: {error}")
                }
                Err(_) => {}
            }
        }
    })
}

/// Time to open with xknock attached natively to the server's veth.
pub(crate) fn time_to_open_xknock(tries: usize) -> anyhow::Result<Stat> {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let config = bench_config("");
    let iface = lab.server_if.clone();
    // Attached from inside the server namespace, where the interface is.
    let mut filter = lab.server.within(move || -> anyhow::Result<Filter> {
        let mut filter = Filter::load(&config)?;
        filter.attach(&iface, AttachMode::Native)?;
        Ok(filter)
    })?;
    let mut samples = Vec::with_capacity(tries);
    for _ in 0..tries {
        samples.push(open_time(&lab)?);
        filter.maps_mut().clear_grants_and_flows()?;
    }
    Ok(Stat::of(samples))
}

/// Time to open with knockd and the iptables rule its documentation shows.
pub(crate) fn time_to_open_knockd(tries: usize) -> anyhow::Result<Stat> {
    let lab = Lab::new();
    lab.tcp_listener(22);
    let dir = tempfile::tempdir()?;
    let iptables = |args: &[&str]| -> anyhow::Result<()> {
        let status = lab.server.command("iptables").args(args).status()?;
        ensure!(status.success(), "iptables {} failed", args.join(" "));
        Ok(())
    };
    iptables(&["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"])?;
    let conf = dir.path().join("knockd.conf");
    fs::write(
        &conf,
        format!(
            "[options]\n    logfile = {}\n\n[openSSH]\n    sequence = 7291:tcp,4728:udp,6742:tcp\n    \
             seq_timeout = 10\n    tcpflags = syn\n    \
             command = /usr/sbin/iptables -I INPUT 1 -s %IP% -p tcp --dport 22 -j ACCEPT\n",
            dir.path().join("knockd.log").display()
        ),
    )?;
    let mut knockd = lab
        .server
        .command("knockd")
        .arg("-c")
        .arg(&conf)
        .args(["-i", &lab.server_if])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting knockd")?;
    // knockd opens its capture asynchronously; give it a moment.
    std::thread::sleep(Duration::from_secs(1));
    let mut samples = Vec::with_capacity(tries);
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..tries {
            samples.push(open_time(&lab)?);
            iptables(&[
                "-D", "INPUT", "-s", CLIENT, "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
            ])?;
        }
        Ok(())
    })();
    drop(knockd.kill());
    drop(knockd.wait());
    result?;
    Ok(Stat::of(samples))
}
