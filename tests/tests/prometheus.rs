//! Prometheus for real: Debian's prometheus scrapes `xknock run --metrics`
//! in the lab and answers queries about a knock through its HTTP API, with
//! the shipped alerting rules loaded; promtool accepts the exposition, the
//! rules, and the rules' unit tests (dist/xknock.rules.test.yml).

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab::{Lab, Netns, SERVER_V4, Xknock, article_config, article_knock, require_program, run};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9464";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn dist(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file);
    path.to_str().expect("UTF-8 path").to_owned()
}

#[test]
fn the_shipped_alerting_rules_check_and_pass_their_unit_tests() {
    require_program("promtool", "prometheus");
    let checked = run("promtool", &["check", "rules", &dist("xknock.rules.yml")]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
    let tested = run(
        "promtool",
        &["test", "rules", &dist("xknock.rules.test.yml")],
    );
    assert!(String::from_utf8_lossy(&tested.stdout).contains("SUCCESS"));
}

/// `curl ARGS` in `netns`; its standard output.
fn curl(netns: &Netns, args: &[&str]) -> Option<String> {
    let out = netns
        .command("curl")
        .args(["--silent", "--fail", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A prometheus server in a namespace, stopped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

/// The samples Prometheus answers for `query`, as (labels, value).
fn query(netns: &Netns, query: &str) -> Vec<(Value, String)> {
    let Some(body) = curl(
        netns,
        &[
            &format!("http://{PROMETHEUS}/api/v1/query"),
            "--data-urlencode",
            &format!("query={query}"),
        ],
    ) else {
        return Vec::new();
    };
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    answer["data"]["result"]
        .as_array()
        .map(|result| {
            result
                .iter()
                .map(|sample| {
                    (
                        sample["metric"].clone(),
                        sample["value"][1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The samples for `q` once one has the value `want`, within 30 s.
fn wait_for(netns: &Netns, q: &str, want: &str) -> Vec<(Value, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = query(netns, q);
        if samples.iter().any(|(_, value)| value == want) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{q}: no sample of {want}, last answer {samples:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_xknock_and_answers_for_a_knock() {
    require_program("prometheus", "prometheus");
    require_program("promtool", "prometheus");
    let lab = Lab::new();
    let xknock = Xknock::start(
        &lab,
        &article_config("60s", "\"tcp:22\""),
        &["--metrics", METRICS],
        false,
    );

    // promtool accepts the exposition as Prometheus' own linter reads it.
    let exposition = curl(&lab.server, &[&format!("http://{METRICS}/metrics")]).expect("scrape");
    let mut lint = lab
        .server
        .command("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(
        &mut lint.stdin.take().expect("stdin"),
        exposition.as_bytes(),
    )
    .expect("feed promtool");
    let linted = lint.wait_with_output().expect("promtool");
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: xknock\n    static_configs:\n      - targets: [\"{METRICS}\"]\n",
            dist("xknock.rules.yml")
        ),
    )
    .expect("prometheus.yml");
    let data = dir.path().join("data");
    let server = lab
        .server
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _server = Prometheus(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&lab.server, &[&format!("http://{PROMETHEUS}/-/ready")]).is_none() {
        assert!(Instant::now() < deadline, "prometheus never got ready");
        thread::sleep(Duration::from_millis(200));
    }
    wait_for(&lab.server, "up{job=\"xknock\"}", "1");
    let before = wait_for(
        &lab.server,
        "xknock_verdicts_total{reason=\"drop_knock_granted\"}",
        "0",
    );
    assert_eq!(before.len(), 1, "{before:?}");

    article_knock(&lab, SERVER_V4);
    xknock.expect_event(&[("event", "grant")]);
    // The grant's verdict counted, scraped, and answered by Prometheus.
    wait_for(
        &lab.server,
        "xknock_verdicts_total{reason=\"drop_knock_granted\"}",
        "1",
    );
    wait_for(&lab.server, "xknock_grants", "1");
    let occupancy = query(&lab.server, "xknock_map_max_entries");
    let maps: Vec<&str> = occupancy
        .iter()
        .filter_map(|(labels, _)| labels["map"].as_str())
        .collect();
    for map in ["grants", "flows", "progress", "first_steps", "penalties"] {
        assert!(maps.contains(&map), "{map} missing: {occupancy:?}");
    }
    assert!(!query(&lab.server, "xknock_map_entries{map=\"grants\"}").is_empty());
    // The shipped rules are loaded, and none fires for a healthy filter.
    let rules = curl(&lab.server, &[&format!("http://{PROMETHEUS}/api/v1/rules")]).expect("rules");
    let rules: Value = serde_json::from_str(&rules).expect("JSON");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 9, "{rules}");
    assert!(
        query(&lab.server, "ALERTS{alertstate=\"firing\"}").is_empty(),
        "{:?}",
        query(&lab.server, "ALERTS")
    );
}
