//! `cargo xtask`: set-up, tests, the demo and the bench, each runnable on a
//! fresh machine of this kind (they install what they need first).
//!
//! xtask depends on no crate of this workspace: building it must not build
//! the XDP program, whose toolchain and linker set-up installs. The demo and
//! the bench are binaries of their own, built once set-up is done.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a developer's command-line tool: printing is how it reports"
)]

mod fresh;
#[cfg(test)]
mod house;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};

/// The nightly that builds the XDP program (knock-user/build.rs pins it too).
const BPF_TOOLCHAIN: &str = "nightly-2026-07-01";
/// bpf-linker 0.10.3 uses the nightly's own LLVM 22; newer ones want LLVM 23.
const BPF_LINKER_VERSION: &str = "0.10.3";
/// cargo-deb, which makes the Debian package (`cargo xtask deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// cargo-fuzz, which builds and runs the fuzz targets (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// The fuzz targets (fuzz/fuzz_targets), and which take the SPA dictionary.
const FUZZ_TARGETS: [(&str, bool); 7] = [
    ("spa_datagram", true),
    ("spa_plaintext", true),
    ("config", false),
    ("import_knockd", false),
    ("import_fwknop", false),
    ("one_time", false),
    ("machine", false),
];
/// Seconds each fuzz target runs in `cargo xtask test`.
const TEST_FUZZ_SECONDS: u64 = 10;
/// Debian packages the tests and the demo drive, and those xknock's build needs.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "openssh-server",
    "openssh-client",
    "knockd",
    "fwknop-client",
    // fwknopd judges the same SPA packets as xknock (with a do-nothing
    // firewall command, not --test, which never records replays).
    "fwknop-server",
    "nmap",
    "hping3",
    "tcpdump",
    "bpftool",
    "nftables",
    "iptables",
    "ethtool",
    // `ps`, which the bench uses to find NAPI threads.
    "procps",
    // The metrics test scrapes with a real HTTP client.
    "curl",
    // A real Prometheus scrapes `xknock run --metrics`; promtool checks the
    // exposition and the shipped alerting rules.
    "prometheus",
    // `ping -s SIZE` knocks on ICMP steps.
    "iputils-ping",
    // `systemd-analyze verify` checks the unit.
    "systemd",
    // etcd-client (the fleet) compiles etcd's protos when xknock builds.
    "protobuf-compiler",
    "libprotobuf-dev",
    // The fleet's tests run a three-member etcd cluster (and etcdctl).
    "etcd-server",
    "etcd-client",
    // The fleet's TLS test makes its certificates.
    "openssl",
];

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned BPF toolchain, bpf-linker and the Debian packages.
    Setup,
    /// Set up, then check formatting and lints and run every test (needs root).
    Test,
    /// Set up, then show xknock hiding a real sshd on veth in network namespaces.
    Demo,
    /// Set up, then measure xknock against its baselines; writes target/bench/.
    Bench,
    /// Set up, then build what an installation needs in target/dist: the
    /// release binary, its man pages, shell completions and systemd unit.
    Dist,
    /// Set up, then build the Debian package: target/debian/xknock_*.deb.
    Deb,
    /// Set up, then run every fuzz target (cargo-fuzz, libFuzzer) for
    /// SECONDS each; fails on a crash, a panic, a timeout or running out of
    /// memory, leaving the input in target/fuzz/artifacts/TARGET.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = TEST_FUZZ_SECONDS)]
        seconds: u64,
    },
    /// Set up, then run the soak (tests/tests/soak.rs) for MINUTES: the
    /// filter under mixed traffic, floods, reloads and kill -9; its report
    /// goes to target/soak/report.md. `./x test` runs it for 3 minutes.
    Soak {
        /// How long it runs.
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Test => {
            setup()?;
            test()
        }
        Task::Demo => {
            setup()?;
            cargo(&[
                "build",
                "--package",
                "knock-user",
                "--package",
                "tests",
                "--bins",
            ])?;
            run_built("demo")
        }
        Task::Bench => {
            setup()?;
            cargo(&["build", "--package", "knock-user", "--package", "bench"])?;
            run_built("bench")
        }
        Task::Dist => {
            setup()?;
            dist()
        }
        Task::Deb => {
            setup()?;
            deb().map(|_| ())
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Task::Soak { minutes } => {
            setup()?;
            soak(minutes)
        }
    }
}

/// Installs the cargo subcommand `tool` (cargo-deb, cargo-fuzz) at
/// `version` unless `cargo SUBCOMMAND --version` says it is there: only the
/// tasks that use one install it, so the demo's first run does not wait.
fn ensure_cargo_tool(tool: &str, version: &str) -> anyhow::Result<()> {
    let subcommand = tool.trim_start_matches("cargo-");
    let found = output_of("cargo", &[subcommand, "--version"]).unwrap_or_default();
    if found.contains(version) {
        return Ok(());
    }
    cargo(&["install", tool, "--version", version, "--locked", "--force"])
}

/// Runs every fuzz target for `seconds`, each from its corpus so far
/// (target/fuzz/corpus/TARGET) and its seeds (fuzz/seeds/TARGET), on the
/// BPF nightly with the fuzz crate's parsers built without the XDP program.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    ensure_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)?;
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    let out = root.join("target").join("fuzz");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("a UTF-8 path");
    for (target, spa) in FUZZ_TARGETS {
        let corpus = out.join("corpus").join(target);
        let artifacts = out.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let mut args = vec![
            "run".to_owned(),
            BPF_TOOLCHAIN.to_owned(),
            "cargo".to_owned(),
            "fuzz".to_owned(),
            "run".to_owned(),
            target.to_owned(),
            path(&corpus)?,
        ];
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            args.push(path(&seeds)?);
        }
        args.extend([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            "-timeout=10".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
            "-print_final_stats=1".to_owned(),
            format!("-artifact_prefix={}/", path(&artifacts)?),
        ]);
        if spa {
            args.push(format!(
                "-dict={}",
                path(&fuzz_dir.join("dict").join("spa.dict"))?
            ));
        }
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let status = Command::new("rustup")
            .args(&args)
            .env("XKNOCK_WITHOUT_EBPF", "1")
            .current_dir(&fuzz_dir)
            .status()
            .context("cannot run cargo fuzz")?;
        ensure!(
            status.success(),
            "fuzz target {target} failed ({status}): its input is in {}",
            artifacts.display()
        );
    }
    Ok(())
}

/// Runs the soak test alone for `minutes`, with what it prints shown.
fn soak(minutes: f64) -> anyhow::Result<()> {
    ensure!(minutes > 0.0, "--minutes must be more than 0");
    cargo(&["build", "--package", "knock-user"])?;
    let xknock = xknock_bin();
    ensure_carries_program(&xknock)?;
    eprintln!("xtask: soaking for {minutes} min");
    let status = Command::new(env!("CARGO"))
        .args([
            "test",
            "--package",
            "tests",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ])
        .env("XKNOCK_BIN", &xknock)
        .env("XKNOCK_SOAK_MINUTES", minutes.to_string())
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo test")?;
    ensure!(
        status.success(),
        "the soak failed ({status}); target/soak has its report, every loader run's log and the events"
    );
    Ok(())
}

/// target/debian/xknock_VERSION_ARCH.deb, made by cargo-deb from `dist`'s
/// release binary, man pages and completions (knock-user's
/// `[package.metadata.deb]`); returns its path.
fn deb() -> anyhow::Result<PathBuf> {
    ensure_cargo_tool("cargo-deb", CARGO_DEB_VERSION)?;
    dist()?;
    let out = workspace_root().join("target").join("debian");
    // Only this build's package is left there for the tests to install.
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let out_arg = out.to_str().context("a UTF-8 target path")?;
    cargo(&[
        "deb",
        "--package",
        "knock-user",
        "--no-build",
        "--output",
        out_arg,
    ])?;
    let package = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb left no .deb")?;
    eprintln!("xtask: {} is ready (README: Install)", package.display());
    Ok(package)
}

/// target/dist: xknock (release), man/, completions/, xknock.service.
fn dist() -> anyhow::Result<()> {
    let target = workspace_root().join("target");
    let out = target.join("dist");
    cargo(&[
        "build",
        "--release",
        "--package",
        "knock-user",
        "--bin",
        "xknock",
    ])?;
    let xknock = target.join("release").join("xknock");
    ensure_carries_program(&xknock)?;
    let out_arg = out.to_str().context("a UTF-8 target path")?;
    cargo(&[
        "run",
        "--quiet",
        "--package",
        "knock-user",
        "--example",
        "assets",
        "--",
        out_arg,
    ])?;
    std::fs::copy(&xknock, out.join("xknock"))
        .with_context(|| format!("copying {}", xknock.display()))?;
    eprintln!(
        "xtask: {} is ready (README: Running it as a service)",
        out.display()
    );
    Ok(())
}

fn debug_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("debug")
}

fn xknock_bin() -> PathBuf {
    debug_dir(&workspace_root().join("target")).join("xknock")
}

/// Fails unless the xknock binary at `bin` says it carries its XDP program,
/// so nothing can demo, test or bench a hollow build.
fn ensure_carries_program(bin: &Path) -> anyhow::Result<()> {
    let output = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && version.contains("XDP program: embedded"),
        "{} does not carry its XDP program: {}",
        bin.display(),
        version.trim()
    );
    eprintln!(
        "xtask: {}: {}",
        bin.display(),
        version.lines().last().unwrap_or_default()
    );
    Ok(())
}

/// Runs a binary built in target/debug, with the xknock binary it drives.
fn run_built(name: &str) -> anyhow::Result<()> {
    let xknock = xknock_bin();
    ensure_carries_program(&xknock)?;
    let program = debug_dir(&workspace_root().join("target")).join(name);
    let status = Command::new(&program)
        .env("XKNOCK_BIN", &xknock)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {}", program.display()))?;
    ensure!(status.success(), "{name} failed: {status}");
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    ensure!(
        status.success(),
        "{program} {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    command(env!("CARGO"), args)
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "xknock installs packages, creates network namespaces and attaches XDP programs: run as root"
        );
    }
    Ok(())
}

fn setup() -> anyhow::Result<()> {
    require_root()?;
    command(
        "rustup",
        &[
            "toolchain",
            "install",
            BPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ],
    )?;
    let linker = output_of("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        cargo(&[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])?;
    }
    mount_bpffs()?;
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            output_of("dpkg-query", &["-W", "-f=${Status}", package])
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        command("apt-get", &["update"])?;
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        ensure!(
            status.success(),
            "apt-get install {} failed: {status}",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Where xknock pins its maps and link, and the tests look for them.
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts the BPF filesystem at /sys/fs/bpf unless one is there: systemd
/// mounts it at boot, but a fresh machine of this kind boots without it.
#[allow(
    trivial_numeric_casts,
    reason = "statfs's f_type is i64 here, but unsigned or narrower on other targets (musl, 32-bit)"
)]
fn mount_bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = std::ffi::CString::new(BPFFS)?;
    // SAFETY: statfs writes into the zeroed struct we pass; `path` is a
    // valid NUL-terminated string.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0 && fs.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    command("mount", &["-t", "bpf", "bpf", BPFFS])
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The XDP crate only builds for BPF: lint it there, with its own toolchain.
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "knock-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    command(
        "rustup",
        &[
            "run",
            BPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--package",
            "knock-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(&["build", "--package", "knock-user"])?;
    let xknock = xknock_bin();
    ensure_carries_program(&xknock)?;
    // The package test installs the real package: built here, release.
    let package = deb()?;
    fresh::check_order_of_events()?;
    // The integration tests mostly wait on timers: run more at once than
    // there are cores.
    eprintln!("xtask: cargo test --workspace -- --nocapture");
    // --nocapture: the differential and flood tests report what they compared.
    let status = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--", "--nocapture"])
        .env("XKNOCK_BIN", &xknock)
        .env("XKNOCK_DEB", &package)
        .env("RUST_TEST_THREADS", "6")
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo test")?;
    ensure!(status.success(), "cargo test --workspace failed: {status}");
    // A short run of every fuzz target (their corpora grow from run to run).
    fuzz(TEST_FUZZ_SECONDS)
}
