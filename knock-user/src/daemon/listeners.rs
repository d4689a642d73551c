//! Ports of this host that a rotating rule's steps may land on. A knock
//! port stops every packet that is no knock (a connection's own packets
//! too), so for the two windows a rotating sequence is live its ports are
//! closed to the host's services and to the replies its own connections
//! get. `run` warns of the ports it can see being used.

use std::{collections::BTreeSet, fs, path::Path};

use knock_common::Knock;

use crate::config::{Config, PortSpec, rotating::PortRange};

/// Listed per warning before "and N more".
const LISTED: usize = 8;

/// Warns of ports this host uses that a rotating rule may draw as steps
/// (for the commands that run on the server: `run`, a reload,
/// `check-config`).
pub fn warn_of_served_ports(config: &Config) {
    for warning in rotating_port_warnings(config)
        .into_iter()
        .chain(fleet_port_warnings(config))
    {
        log::warn!("{warning}");
    }
}

/// What this host (this network namespace) uses that the rotating rules'
/// port ranges cover.
pub fn rotating_port_warnings(config: &Config) -> Vec<String> {
    let rotating: Vec<_> = config
        .rules
        .iter()
        .filter_map(|rule| Some((rule.name.as_str(), rule.rotating()?)))
        .collect();
    if rotating.is_empty() {
        return Vec::new();
    }
    let ephemeral = ephemeral_range(Path::new("/proc/sys/net/ipv4/ip_local_port_range"));
    let tcp = listening(&["/proc/net/tcp", "/proc/net/tcp6"], Some("0A"));
    let udp = listening(&["/proc/net/udp", "/proc/net/udp6"], None);
    let mut warnings = Vec::new();
    for (name, rotating) in rotating {
        let range = rotating.range;
        if let Some(ephemeral) = ephemeral.filter(|e| e.overlaps(&range)) {
            warnings.push(format!(
                "rule `{name}`: port_range {range} overlaps this host's ephemeral ports ({ephemeral}, net.ipv4.ip_local_port_range): replies to its own connections on a port that is a knock step are stopped; choose a range outside it"
            ));
        }
        let used: Vec<String> = tcp
            .iter()
            .map(|&port| PortSpec(Knock::tcp(port)))
            .chain(udp.iter().map(|&port| PortSpec(Knock::udp(port))))
            // Protected ports are never drawn.
            .filter(|spec| range.contains(spec.0.port) && !rotating.reserved.contains(spec))
            .map(|spec| spec.to_string())
            .collect();
        if !used.is_empty() {
            let more = used.len().saturating_sub(LISTED);
            let mut listed = used[..used.len().min(LISTED)].join(", ");
            if more > 0 {
                listed.push_str(&format!(" and {more} more"));
            }
            warnings.push(format!(
                "rule `{name}`: port_range {range} holds ports this host serves ({listed}): while one is a knock step, new connections to it are stopped; choose a range without them"
            ));
        }
    }
    warnings
}

/// A fleet's host opens connections to etcd from ephemeral ports: a TCP
/// knock step among them would stop etcd's answers on the connection that
/// drew it, and the host would lose the fleet now and then.
pub fn fleet_port_warnings(config: &Config) -> Vec<String> {
    match ephemeral_range(Path::new("/proc/sys/net/ipv4/ip_local_port_range")) {
        Some(ephemeral) if config.fleet.is_some() => knock_steps_within(config, ephemeral),
        _ => Vec::new(),
    }
}

/// A warning for each rule with TCP knock steps within `ephemeral`.
fn knock_steps_within(config: &Config, ephemeral: PortRange) -> Vec<String> {
    config
        .rules
        .iter()
        .filter_map(|rule| {
            let steps: Vec<String> = rule
                .sequence()
                .iter()
                .filter(|s| s.0.proto == knock_common::IPPROTO_TCP && ephemeral.contains(s.0.port))
                .map(ToString::to_string)
                .collect();
            (!steps.is_empty()).then(|| {
                format!(
                    "rule `{}`: {} in this host's ephemeral ports ({ephemeral}, net.ipv4.ip_local_port_range): etcd's answers to a connection that draws one are stopped; choose steps outside it, or reserve them (net.ipv4.ip_local_reserved_ports)",
                    rule.name,
                    steps.join(", ")
                )
            })
        })
        .collect()
}

/// `ip_local_port_range`'s two numbers.
fn ephemeral_range(path: &Path) -> Option<PortRange> {
    let text = fs::read_to_string(path).ok()?;
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    Some(PortRange {
        low: numbers.next()?.ok()?,
        high: numbers.next()?.ok()?,
    })
}

/// Local ports of the sockets in /proc/net tables, those in `state` only
/// if given (hexadecimal, as the table writes it).
fn listening(tables: &[&str], state: Option<&str>) -> BTreeSet<u16> {
    tables
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| local_port(line, state))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `  0: 0100007F:0016 00000000:0000 0A ...`: the local port, if the
/// socket is in `state`.
fn local_port(line: &str, state: Option<&str>) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let socket_state = fields.nth(1)?;
    if state.is_some_and(|wanted| wanted != socket_state) {
        return None;
    }
    let (_, port) = local.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_give_local_ports() {
        let listen = "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let established = "   1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let v6 = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1";
        assert_eq!(local_port(listen, Some("0A")), Some(22));
        assert_eq!(local_port(established, Some("0A")), None);
        assert_eq!(local_port(established, None), Some(22));
        assert_eq!(local_port(v6, Some("0A")), Some(8080));
    }

    #[test]
    fn tcp_knock_steps_among_ephemeral_ports_are_named() {
        let config = Config::parse(
            "[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:40000\", \"udp:40001\", \"tcp:3721\"]\nsequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n",
        )
        .expect("valid");
        let ephemeral = PortRange {
            low: 32768,
            high: 60999,
        };
        let warnings = knock_steps_within(&config, ephemeral);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("rule `ssh`: tcp:40000 in this host's ephemeral ports"),
            "{warnings:?}"
        );
        let below = PortRange {
            low: 50000,
            high: 60999,
        };
        assert_eq!(knock_steps_within(&config, below), Vec::<String>::new());
    }

    #[test]
    fn the_ephemeral_range_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("range");
        fs::write(&path, "32768\t60999\n").expect("write");
        assert_eq!(
            ephemeral_range(&path),
            Some(PortRange {
                low: 32768,
                high: 60999
            })
        );
    }
}
