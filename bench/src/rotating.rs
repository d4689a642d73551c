//! What a rotating rule costs: per packet, beside the plain rule the other
//! rows use, and per rotation (each window's sequences are a new generation
//! the verifier checks).

use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// The source knocking on the rotating rule; probes of other paths come
/// from `CLIENT`.
const KNOCKER: &str = "198.18.0.66";

/// The bench's rule and a rotating one (a window of an hour, so no window
/// ends during a run), with its secret in `dir`.
fn rotating_config(dir: &Path) -> anyhow::Result<Config> {
    let key = dir.join("bench.key");
    fs::write(&key, xknock::config::rotating::keygen()?)?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    let text = format!(
        "{SILENT}[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"1h\"\nopen_for = \"1h\"\nprotect = [\"tcp:22\"]\n\
         [[rule]]\nname = \"rotating\"\nsecret_file = \"{}\"\nrotate = \"1h\"\nsteps = 4\n\
         sequence_timeout = \"1h\"\nopen_for = \"1h\"\nprotect = [\"tcp:2222\"]\n",
        key.display()
    );
    Ok(Config::parse(&text)?)
}

fn step_frame(src: &str, step: PortSpec) -> Vec<u8> {
    if step.0.proto == knock_common::IPPROTO_UDP {
        Frame::udp(ip(src), ip(SERVER), step.0.port).build().0
    } else {
        tcp(src, SERVER, step.0.port, TCP_SYN)
    }
}

pub(crate) struct RotatingCosts {
    pub pass: Stat,
    pub paths: Vec<PathCost>,
    /// Loading one generation (what each rotation does), ms.
    pub load_ms: Stat,
}

pub(crate) fn rotating_costs(effort: &Effort) -> anyhow::Result<RotatingCosts> {
    let plain = tcp(CLIENT, SERVER, 80, TCP_ACK);
    let dir = tempfile::tempdir()?;
    let config = rotating_config(dir.path())?;
    let kernel = KernelConfig::try_from(&config)?;
    let alone = Filter::load(&bench_config(SILENT))?;
    let beside = Filter::load(&kernel)?;
    let sequence = config.rules[1]
        .sequence_at(std::time::SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    // A first step the knocker has sent: measured again, it is a retransmit.
    let rotating_step = step_frame(KNOCKER, sequence[0]);
    beside.test_run(&rotating_step, 1)?;
    let plain_step = tcp(KNOCKER, SERVER, FIRST_STEP_PORT, TCP_SYN);
    alone.test_run(&plain_step, 1)?;
    beside.test_run(&plain_step, 1)?;
    let paths: Vec<(&'static str, (&Filter, Vec<u8>))> = vec![
        (
            "unprotected TCP ACK, one plain rule",
            (&alone, plain.clone()),
        ),
        ("same, beside a rotating rule", (&beside, plain)),
        (
            "plain rule's knock step (repeated), one plain rule",
            (&alone, plain_step.clone()),
        ),
        (
            "same, beside a rotating rule (3 rule indexes)",
            (&beside, plain_step),
        ),
        (
            "rotating rule's knock step (repeated)",
            (&beside, rotating_step),
        ),
        (
            "SYN to the rotating rule's protected port, no grant (drop)",
            (&beside, tcp(CLIENT, SERVER, 2222, TCP_SYN)),
        ),
    ];
    let (pass, paths) = paired_filter_trials(effort, &paths)?;
    let loads = (0..effort.trials.min(5))
        .map(|_| {
            let start = Instant::now();
            drop(Filter::load(&kernel)?);
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RotatingCosts {
        pass,
        paths,
        load_ms: Stat::of(loads),
    })
}

pub(crate) fn render(md: &mut String, costs: &RotatingCosts) {
    let _ = writeln!(
        md,
        "\n## Rotating rules\n\nA rotating rule holds two sequences (this window's and the previous one's), \
         each in a rule index of its own; packets to other ports never look at rules. Same pairing with \
         XDP_PASS as above.\n"
    );
    cost_table(md, costs.pass, &costs.paths, 1);
    let _ = writeln!(
        md,
        "\nA knock-port packet runs every rule index, so a rotating rule's two add to what each knock \
         step costs; other packets do not notice it. Each rotation loads a new generation of the \
         filter, verifier included: {:.0} ms of one CPU (median; range {:.0}-{:.0}), started a few \
         seconds before the window begins.",
        costs.load_ms.median, costs.load_ms.min, costs.load_ms.max
    );
}
