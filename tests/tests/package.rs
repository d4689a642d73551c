//! The Debian package (`cargo xtask deb`, which `cargo xtask test` builds
//! and names in XKNOCK_DEB): dpkg installs it on the lab machine, its files
//! are where Debian puts them, systemd accepts its unit, which is neither
//! enabled nor started, the installed binary accepts the shipped example and
//! refuses the configuration until it is edited; removal takes off a filter
//! the installed xknock attached, and a purge takes the configuration.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests show what they do on the test's output"
)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab::{Lab, article_config, require_program, require_root};

const CONFFILE: &str = "/etc/xknock/xknock.toml";

/// The package under test.
fn package() -> PathBuf {
    let path = std::env::var_os("XKNOCK_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debian/xknock_0.1.0-1_amd64.deb")
        });
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask deb` makes it (`cargo xtask test` does)",
        path.display()
    );
    path
}

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("dpkg")
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether dpkg has xknock installed (not merely its configuration).
fn installed() -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "xknock"])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        drop(dpkg(&["--purge", "xknock"]));
    }
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_package_installs_verifies_and_removes_cleanly_taking_its_filter_off() {
    require_root();
    require_program("dpkg", "dpkg");
    require_program("systemd-analyze", "systemd");
    let deb = package();
    // The lab machine's package is this test's: one left installed (by a
    // run that was killed, or by hand) goes first, with its configuration.
    if installed() {
        eprintln!("package: xknock was installed; purging it first");
        ok(dpkg(&["--purge", "xknock"]), "dpkg --purge (before)");
    }
    assert!(!installed());
    let _purge = Purge;
    ok(
        dpkg(&["--install", deb.to_str().expect("UTF-8")]),
        "dpkg --install",
    );
    assert!(installed());

    for (path, want) in [
        ("/usr/sbin/xknock", 0o755),
        ("/lib/systemd/system/xknock.service", 0o644),
        (CONFFILE, 0o600),
        ("/usr/share/doc/xknock/examples/xknock.toml", 0o644),
        ("/usr/share/doc/xknock/examples/xknock.rules.yml", 0o644),
        ("/usr/share/doc/xknock/copyright", 0o644),
        ("/usr/share/man/man1/xknock.1.gz", 0o644),
        ("/usr/share/man/man1/xknock-run.1.gz", 0o644),
        ("/usr/share/bash-completion/completions/xknock", 0o644),
        ("/usr/share/zsh/vendor-completions/_xknock", 0o644),
        ("/usr/share/fish/vendor_completions.d/xknock.fish", 0o644),
    ] {
        assert_eq!(mode(path), want, "{path}");
    }
    let conffiles = ok(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Conffiles}", "xknock"])
            .output()
            .expect("dpkg-query"),
        "dpkg-query",
    );
    assert!(conffiles.contains(CONFFILE), "{conffiles}");
    let depends = ok(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Depends}", "xknock"])
            .output()
            .expect("dpkg-query"),
        "dpkg-query",
    );
    assert!(depends.contains("libc6"), "{depends}");

    // systemd accepts the installed unit, which runs the installed binary;
    // nothing enabled or started it.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "/lib/systemd/system/xknock.service"])
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("xknock.service"),
        "systemd-analyze verify: {said}"
    );
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/xknock.service").exists(),
        "the package enabled the service"
    );

    let version = ok(
        Command::new("/usr/sbin/xknock")
            .arg("--version")
            .output()
            .expect("xknock"),
        "xknock --version",
    );
    assert!(version.contains("XDP program: embedded"), "{version}");
    ok(
        Command::new("/usr/sbin/xknock")
            .args(["check-config", "/usr/share/doc/xknock/examples/xknock.toml"])
            .output()
            .expect("xknock"),
        "check-config on the shipped example",
    );
    // Until it is edited, the configuration protects nothing and is refused
    // (so the service would attach nothing).
    let refused = Command::new("/usr/sbin/xknock")
        .args(["check-config", CONFFILE])
        .output()
        .expect("xknock");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing to protect"));

    // The operator edits it; the installed xknock attaches and pins a filter.
    let lab = Lab::new();
    let pin_dir = format!("/sys/fs/bpf/xkdeb{}", std::process::id());
    std::fs::write(
        CONFFILE,
        format!(
            "pin_dir = \"{pin_dir}\"\ninterfaces = [\"{}\"]\n{}",
            lab.server_if,
            article_config("60s", "\"tcp:22\"")
        ),
    )
    .expect("edit the configuration");
    let mut run = lab
        .server
        .command("/usr/sbin/xknock")
        .args(["run", "--config", CONFFILE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xknock run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.attached_xdp().is_none() {
        assert!(
            Instant::now() < deadline,
            "the installed xknock never attached"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: plain signal delivery to our child.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    assert!(run.wait().expect("wait").success());
    assert_eq!(
        lab.attached_xdp().as_deref(),
        Some("xdp"),
        "the filter stays"
    );
    assert!(Path::new(&pin_dir).exists());

    // Removal takes the filter off; the edited configuration stays.
    ok(dpkg(&["--remove", "xknock"]), "dpkg --remove");
    assert!(!installed());
    assert!(!Path::new("/usr/sbin/xknock").exists());
    assert_eq!(lab.attached_xdp(), None, "removal left the filter attached");
    assert!(!Path::new(&pin_dir).exists(), "removal left {pin_dir}");
    assert!(
        Path::new(CONFFILE).exists(),
        "a removal keeps the configuration"
    );

    ok(dpkg(&["--purge", "xknock"]), "dpkg --purge");
    assert!(
        !Path::new("/etc/xknock").exists(),
        "a purge takes /etc/xknock"
    );
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "xknock"])
        .output()
        .expect("dpkg-query");
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("installed"),
        "{status:?}"
    );
}
