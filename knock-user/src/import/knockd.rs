//! `xknock import-knockd knockd.conf`: knockd's configuration carried over
//! into xknock's, with a warning (naming the option and its line) for all
//! that cannot be. `Imported` is what every import gives.

use std::fmt::Write as _;

use crate::config::{Config, PortSpec};

/// `open_for` of a section without `cmd_timeout` (knockd then runs no stop
/// command at all; xknock's grants always end).
pub const DEFAULT_OPEN_FOR: &str = "60s";

/// The conversion: xknock's configuration, and what did not carry over.
#[derive(Debug, Default)]
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// Why the file could not be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {0}: `{1}` is neither a [section], an option nor `key = value`")]
    Syntax(usize, String),
    #[error("nothing to carry over: no section opens a port")]
    NothingOpens,
    /// The result does not validate: a bug here, or a knockd setup xknock
    /// refuses (say, two sections with one sequence).
    #[error("the converted configuration is not valid ({0}):\n{1}")]
    Invalid(String, String),
}

struct Section {
    name: String,
    line: usize,
    options: Vec<(usize, String, String)>,
}

/// Converts the text of a knockd.conf.
pub fn import_knockd(text: &str) -> Result<Imported, ImportError> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if let Some(name) = content.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            sections.push(Section {
                name: name.trim().to_owned(),
                line,
                options: Vec::new(),
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            return Err(ImportError::Syntax(line, content.to_owned()));
        };
        let (key, value) = match content.split_once('=') {
            Some((key, value)) => (key.trim().to_lowercase(), value.trim().to_owned()),
            None => (content.to_lowercase(), String::new()),
        };
        section.options.push((line, key, value));
    }

    let mut out = Imported::default();
    let mut head = String::from("# Converted from knockd.conf by `xknock import-knockd`.\n");
    let mut rules = String::new();
    for section in &sections {
        if section.name.eq_ignore_ascii_case("options") {
            for (line, key, value) in &section.options {
                if key == "interface" {
                    let _ = writeln!(head, "interfaces = [\"{value}\"]");
                } else {
                    out.warnings.push(format!(
                        "line {line}: [options] {key}: not carried over (xknock logs its events to stdout)"
                    ));
                }
            }
            continue;
        }
        if let Some(rule) = convert_section(section, &mut out.warnings) {
            rules.push_str(&rule);
        }
    }
    if rules.is_empty() {
        return Err(ImportError::NothingOpens);
    }
    out.toml = format!("{head}\n{rules}");
    match Config::parse(&out.toml) {
        Ok(config) => out.warnings.extend(config.warnings),
        // knockd's one-time file lives on the server; it is read where
        // xknock runs.
        Err(error) if error.to_string().contains("sequences_file") => out.warnings.push(format!(
            "the one-time sequences could not be checked here ({error}); `xknock check-config` on the server checks them"
        )),
        Err(error) => return Err(ImportError::Invalid(error.to_string(), out.toml)),
    }
    Ok(out)
}

/// One section as an xknock rule, or `None` (with a warning) when it cannot
/// be one.
fn convert_section(section: &Section, warnings: &mut Vec<String>) -> Option<String> {
    let name = &section.name;
    let mut sequence: Option<Vec<String>> = None;
    let mut sequences_file = None;
    let mut seq_timeout = "5s".to_owned();
    let mut open_for = None;
    let mut protect: Vec<String> = Vec::new();
    for (line, key, value) in &section.options {
        match key.as_str() {
            "sequence" => match value.split(',').map(knockd_step).collect() {
                Ok(steps) => sequence = Some(steps),
                Err(problem) => {
                    warnings.push(format!(
                        "line {line}: [{name}] sequence: {problem}; section skipped"
                    ));
                    return None;
                }
            },
            "one_time_sequences" => sequences_file = Some(value.clone()),
            "seq_timeout" => seq_timeout = format!("{}s", value.trim()),
            "cmd_timeout" => open_for = Some(format!("{}s", value.trim())),
            "command" | "start_command" => match opened_port(value) {
                Opened::Port(port) => protect.push(port),
                Opened::Closes => {
                    warnings.push(format!(
                        "line {line}: [{name}] {key}: it closes a port; xknock's grants close by themselves when open_for ends; section skipped"
                    ));
                    return None;
                }
                Opened::Unknown => {
                    warnings.push(format!(
                        "line {line}: [{name}] {key}: no port found in `{value}` (iptables --dport, nft dport, knock_add -d); section skipped"
                    ));
                    return None;
                }
            },
            "stop_command" => {}
            "tcpflags" if value.eq_ignore_ascii_case("syn") => {}
            _ => warnings.push(format!("line {line}: [{name}] {key}: not carried over")),
        }
    }
    if protect.is_empty() {
        warnings.push(format!(
            "line {}: [{name}]: no command opens a port; section skipped",
            section.line
        ));
        return None;
    }
    let open_for = open_for.unwrap_or_else(|| {
        warnings.push(format!(
            "line {}: [{name}]: no cmd_timeout (knockd would leave the port open); open_for = \"{DEFAULT_OPEN_FOR}\"",
            section.line
        ));
        DEFAULT_OPEN_FOR.to_owned()
    });
    let source = match (sequence, sequences_file) {
        (_, Some(file)) => format!("sequences_file = \"{file}\""),
        (Some(steps), None) => format!(
            "sequence = [{}]",
            steps
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, None) => {
            warnings.push(format!(
                "line {}: [{name}]: no sequence; section skipped",
                section.line
            ));
            return None;
        }
    };
    let protect: Vec<String> = protect.iter().map(|p| format!("\"{p}\"")).collect();
    Some(format!(
        "[[rule]]\nname = \"{name}\"\n{source}\nsequence_timeout = \"{seq_timeout}\"\nopen_for = \"{open_for}\"\nprotect = [{}]\n\n",
        protect.join(", ")
    ))
}

/// knockd's `PORT[:tcp|:udp]` as xknock's `tcp:PORT`.
fn knockd_step(step: &str) -> Result<String, String> {
    let step = step.trim();
    let (port, proto) = step.split_once(':').unwrap_or((step, "tcp"));
    let spec: PortSpec = format!("{}:{}", proto.trim(), port.trim()).parse()?;
    Ok(spec.to_string())
}

enum Opened {
    Port(String),
    Closes,
    Unknown,
}

/// The port a firewall command opens: iptables/ip6tables `-A`/`-I` with
/// `--dport` and `-p`, nft `add`/`insert` with `tcp|udp dport`, knockd's
/// `knock_add -p PROTO -d PORT`.
fn opened_port(command: &str) -> Opened {
    let words: Vec<&str> = command.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    if words
        .iter()
        .any(|w| matches!(*w, "-D" | "--delete" | "delete"))
    {
        return Opened::Closes;
    }
    let knock_add = words.iter().any(|w| w.ends_with("knock_add"));
    let proto = after("-p").or_else(|| after("--protocol"));
    let port = if knock_add {
        after("-d")
    } else {
        after("--dport").or_else(|| after("--destination-port"))
    };
    if let (Some(proto), Some(port)) = (proto, port) {
        return match format!("{proto}:{port}").parse::<PortSpec>() {
            Ok(spec) => Opened::Port(spec.to_string()),
            Err(_) => Opened::Unknown,
        };
    }
    // nft: ... tcp dport 22 accept
    for proto in ["tcp", "udp"] {
        if let Some(i) = words
            .windows(2)
            .position(|w| w[0] == proto && w[1] == "dport")
            && let Some(port) = words.get(i + 2)
            && let Ok(spec) = format!("{proto}:{port}").parse::<PortSpec>()
        {
            return Opened::Port(spec.to_string());
        }
    }
    Opened::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// knockd's example configuration, as the Debian package ships it.
    const DEBIAN_EXAMPLE: &str = "[options]\n\tUseSyslog\n\n[openSSH]\n\tsequence    = 7000,8000,9000\n\tseq_timeout = 5\n\tcommand     = /sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\ttcpflags    = syn\n\n[closeSSH]\n\tsequence    = 9000,8000,7000\n\tseq_timeout = 5\n\tcommand     = /sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n\ttcpflags    = syn\n\n[openHTTPS]\n\tsequence    = 12345,54321,24680,13579\n\tseq_timeout = 5\n\tcommand     = /usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%\n\ttcpflags    = syn\n";

    #[test]
    fn debians_example_converts_with_warnings_for_what_does_not() {
        let imported = import_knockd(DEBIAN_EXAMPLE).expect("converts");
        let config = Config::parse(&imported.toml).expect("valid");
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["openSSH", "openHTTPS"]);
        assert_eq!(config.rules[0].sequence().len(), 3);
        assert_eq!(config.rules[0].protect[0].to_string(), "tcp:22");
        assert_eq!(config.rules[1].protect[0].to_string(), "tcp:443");
        assert_eq!(config.rules[0].sequence_timeout.as_secs(), 5);
        assert_eq!(config.rules[0].open_for.as_secs(), 60);
        let warned = |needle: &str| imported.warnings.iter().any(|w| w.contains(needle));
        assert!(
            warned("line 2: [options] usesyslog"),
            "{:?}",
            imported.warnings
        );
        assert!(warned("line 13: [closeSSH] command: it closes a port"));
        assert!(warned("no cmd_timeout"));
    }

    #[test]
    fn udp_steps_timeouts_start_commands_nft_and_one_time_files_carry_over() {
        let text = "[options]\n Interface = eth1\n LogFile = /var/log/knockd.log\n\
                    [opencloseVPN]\n sequence = 2222:udp,3333:tcp,4444:udp\n seq_timeout = 15\n\
                    start_command = nft add rule inet filter input ip saddr %IP% udp dport 51820 accept\n\
                    cmd_timeout = 30\n stop_command = nft delete rule inet filter input handle 7\n\
                    [once]\n one_time_sequences = /etc/knockd/once.otp\n\
                    command = /sbin/iptables -I INPUT -s %IP% -p tcp --dport 2022 -j ACCEPT\n\
                    cmd_timeout = 10\n target = 10.0.0.1\n";
        let imported = import_knockd(text).expect("converts");
        assert!(
            imported.toml.contains("interfaces = [\"eth1\"]"),
            "{}",
            imported.toml
        );
        assert!(
            imported
                .toml
                .contains("sequence = [\"udp:2222\", \"tcp:3333\", \"udp:4444\"]")
        );
        assert!(
            imported.toml.contains(
                "sequence_timeout = \"15s\"\nopen_for = \"30s\"\nprotect = [\"udp:51820\"]"
            )
        );
        assert!(
            imported
                .toml
                .contains("sequences_file = \"/etc/knockd/once.otp\"")
        );
        assert!(imported.toml.contains("protect = [\"tcp:2022\"]"));
        let warned = |needle: &str| imported.warnings.iter().any(|w| w.contains(needle));
        assert!(warned("[options] logfile"), "{:?}", imported.warnings);
        assert!(
            warned("line 14: [once] target: not carried over"),
            "{:?}",
            imported.warnings
        );
    }

    #[test]
    fn commands_without_a_port_and_files_without_sections_are_reported() {
        let imported = import_knockd(
            "[a]\nsequence = 1,2,3\ncommand = /usr/bin/logger knock\n[b]\nsequence = 4:udp,5,6\ncommand = iptables -A INPUT -p tcp --dport 22 -j ACCEPT\n",
        )
        .expect("b converts");
        assert!(
            imported
                .warnings
                .iter()
                .any(|w| w.contains("line 3: [a] command: no port found"))
        );
        assert!(matches!(
            import_knockd("sequence = 1,2\n"),
            Err(ImportError::Syntax(1, _))
        ));
        assert!(matches!(
            import_knockd(
                "[closeSSH]\nsequence = 3,2,1\ncommand = iptables -D INPUT -p tcp --dport 22 -j ACCEPT\n"
            ),
            Err(ImportError::NothingOpens)
        ));
    }
}
