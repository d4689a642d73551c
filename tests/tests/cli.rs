//! The `xknock` command line against bad input: a clear error, a non-zero
//! exit, and nothing attached.

use std::process::Output;

use lab::{Lab, TestFilter, article_config, xknock_bin};

fn xknock_in(lab: &Lab, args: &[&str]) -> Output {
    lab.server
        .command(xknock_bin())
        .args(args)
        .output()
        .expect("run xknock")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8").to_owned()
}

#[test]
fn check_config_accepts_a_good_file_and_names_line_and_key_of_a_bad_one() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_config(&dir, "good.toml", &article_config("60s", "\"tcp:22\""));
    let out = xknock_in(&lab, &["check-config", &good]);
    assert!(out.status.success(), "{}", stderr(&out));

    for (text, expected) in [
        (
            article_config("60s", "\"tcp:22\"") + "colour = \"blue\"\n",
            ["line 7", "colour"],
        ),
        (
            article_config("60s", "\"tcp:70000\""),
            ["line 6", "not a port"],
        ),
        (
            article_config("soon", "\"tcp:22\""),
            ["line 5", "not a duration"],
        ),
        (
            article_config("60s", "\"tcp:22\"")
                .replace("[\"tcp:3721\", \"udp:4728\", \"tcp:6742\"]", "[]"),
            ["line 3", "sequence"],
        ),
    ] {
        let bad = write_config(&dir, "bad.toml", &text);
        let out = xknock_in(&lab, &["check-config", &bad]);
        assert!(!out.status.success(), "accepted:\n{text}");
        for needle in expected {
            assert!(
                stderr(&out).contains(needle),
                "{needle:?} missing in {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn run_with_a_bad_config_attaches_nothing() {
    let lab = Lab::new();
    let bad = TestFilter::new(&article_config("60s", "\"udp:0\""));
    let out = bad.xknock(
        &lab,
        &["run", "--config", bad.arg(), "--iface", &lab.server_if],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 7"), "{}", stderr(&out));
    assert_eq!(lab.attached_xdp(), None);
    assert!(!bad.pin_dir.exists(), "nothing may be pinned");
}

#[test]
fn run_on_an_unknown_interface_attaches_nowhere() {
    let lab = Lab::new();
    let good = TestFilter::new(&article_config("60s", "\"tcp:22\""));
    // The good interface first: the bad second one must stop both.
    let out = good.xknock(
        &lab,
        &[
            "run",
            "--config",
            good.arg(),
            "--iface",
            &lab.server_if,
            "--iface",
            "xknone0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--iface: no interface named `xknone0`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.attached_xdp(), None);
    assert!(!good.pin_dir.exists(), "nothing may be pinned");

    let in_file = TestFilter::new(&format!(
        "interfaces = [\"xknone1\"]\n{}",
        article_config("60s", "\"tcp:22\"")
    ));
    let out = in_file.xknock(&lab, &["run", "--config", in_file.arg()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("interfaces") && stderr(&out).contains("xknone1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn knock_refuses_bad_steps_and_unknown_rules() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_config(&dir, "good.toml", &article_config("60s", "\"tcp:22\""));
    let out = xknock_in(&lab, &["knock", lab::CLIENT_V4, "tcp:99999"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a port"), "{}", stderr(&out));
    let out = xknock_in(
        &lab,
        &["knock", lab::CLIENT_V4, "--config", &good, "--rule", "vpn"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no rule named `vpn`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn import_knockd_converts_the_debian_packages_own_example() {
    lab::require_program("knockd", "knockd");
    let example = "/etc/knockd.conf";
    let out = std::process::Command::new(xknock_bin())
        .args(["import-knockd", example])
        .output()
        .expect("run xknock");
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let converted = dir.path().join("xknock.toml");
    std::fs::write(&converted, &out.stdout).expect("write");
    let check = std::process::Command::new(xknock_bin())
        .arg("check-config")
        .arg(&converted)
        .output()
        .expect("run xknock");
    assert!(
        check.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&check)
    );
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(toml.contains("name = \"openSSH\""), "{toml}");
    assert!(toml.contains("protect = [\"tcp:22\"]"), "{toml}");
    // The section that closes the port is reported, not converted.
    assert!(!toml.contains("closeSSH"), "{toml}");
    assert!(
        stderr(&out).contains("[closeSSH] command: it closes a port"),
        "{}",
        stderr(&out)
    );
}
