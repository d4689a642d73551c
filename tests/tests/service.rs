//! The systemd unit: systemd accepts it, and the capabilities it grants are
//! exactly what `xknock run` needs (each one of them, and nothing else).

use std::process::Command;

use lab::{Lab, TestFilter, article_config, require_program, xknock_bin};

const UNIT: &str = xknock::cli::SYSTEMD_UNIT;

/// The value of `key=` in the unit.
fn setting(key: &str) -> &'static str {
    UNIT.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn systemd_accepts_the_unit_and_it_reloads_restarts_and_waits_for_the_network() {
    require_program("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    // The unit names the installed path; check it against the binary here.
    let unit = UNIT.replace("/usr/sbin/xknock", xknock_bin().to_str().expect("utf-8"));
    let path = dir.path().join("xknock.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("xknock.service"),
        "systemd-analyze verify: {stderr}"
    );
    assert_eq!(setting("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(setting("Restart"), "always");
    assert_eq!(setting("After"), "network-online.target");
    assert!(setting("ExecStart").contains(" run --config "));
}

/// Runs `xknock run` for a few seconds with only `caps` (setpriv, as the
/// unit's bounding and ambient sets would); returns its stderr.
fn run_with(lab: &Lab, filter: &TestFilter, caps: &[&str]) -> String {
    let set = std::iter::once("-all".to_owned())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let out = lab
        .server
        .command("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .args(["timeout", "--signal=INT", "4"])
        .arg(xknock_bin())
        .args(["run", "--config", filter.arg(), "--iface", &lab.server_if])
        .output()
        .expect("setpriv");
    drop(filter.xknock(lab, &["detach", "--config", filter.arg()]));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_units_capabilities_are_all_that_run_needs_and_each_is_needed() {
    let lab = Lab::new();
    let filter = TestFilter::new(&article_config("60s", "\"tcp:22\""));
    let caps: Vec<&str> = setting("CapabilityBoundingSet")
        .split_whitespace()
        .collect();
    assert_eq!(
        setting("AmbientCapabilities"),
        setting("CapabilityBoundingSet")
    );
    let all = run_with(&lab, &filter, &caps);
    assert!(all.contains("attached to"), "with {caps:?}: {all}");
    for missing in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != missing).collect();
        let stderr = run_with(&lab, &filter, &fewer);
        assert!(
            !stderr.contains("attached to") && stderr.contains("error"),
            "without {missing}: {stderr}"
        );
    }
}
