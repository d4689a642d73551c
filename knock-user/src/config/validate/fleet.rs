//! `[fleet]`: etcd's endpoints, the prefix and node name, TLS, and what
//! the fleet's own traffic may not be made into.

use std::ops::Range;

use knock_common::IPPROTO_TCP;
use toml::Spanned;

use super::report::Report;
use crate::config::{
    file::{FileFleet, Loaded},
    fleet::{DEFAULT_PREFIX, Fleet, FleetTls},
    model::{ConfigError, Rule},
};

/// The longest node name: one label of a host name.
const MAX_NODE: usize = 63;

/// `[fleet]` on its own.
pub(super) fn check(fleet: &FileFleet, report: &Report<'_>) -> Result<Fleet, ConfigError> {
    let at = |span: Range<usize>, key: &str, problem: String| {
        report.invalid(span, &format!("fleet: {key}"), problem)
    };
    if fleet.etcd.get_ref().is_empty() {
        return Err(at(
            fleet.etcd.span(),
            "etcd",
            "no endpoint; give etcd's client URLs, such as \"http://10.0.0.5:2379\"".into(),
        ));
    }
    let mut endpoints = Vec::new();
    let mut schemes = Vec::new();
    for endpoint in fleet.etcd.get_ref() {
        let (scheme, _) = endpoint_parts(endpoint.get_ref())
            .map_err(|problem| at(endpoint.span(), "etcd", problem))?;
        if endpoints.contains(endpoint.get_ref()) {
            return Err(at(
                endpoint.span(),
                "etcd",
                format!("{} is listed twice", endpoint.get_ref()),
            ));
        }
        if !schemes.is_empty() && !schemes.contains(&scheme) {
            return Err(at(
                endpoint.span(),
                "etcd",
                "mixes http:// and https:// endpoints; a cluster serves clients one way".into(),
            ));
        }
        schemes.push(scheme);
        endpoints.push(endpoint.get_ref().clone());
    }
    let tls = tls(fleet, schemes[0] == "https", report)?;
    let prefix = match &fleet.prefix {
        None => DEFAULT_PREFIX.to_owned(),
        Some(prefix) => {
            check_prefix(prefix.get_ref())
                .map_err(|problem| at(prefix.span(), "prefix", problem))?;
            prefix.get_ref().clone()
        }
    };
    let node = match (&fleet.node, &fleet.hostname) {
        (Some(node), _) => {
            check_node(node.get_ref()).map_err(|problem| at(node.span(), "node", problem))?;
            node.get_ref().clone()
        }
        (None, Some(hostname)) if check_node(hostname).is_ok() => hostname.clone(),
        (None, hostname) => {
            return Err(at(
                fleet.etcd.span(),
                "node",
                format!(
                    "not given, and the host name ({}) cannot stand in for it: give `node`",
                    hostname.as_deref().unwrap_or("unreadable")
                ),
            ));
        }
    };
    Ok(Fleet {
        endpoints,
        prefix,
        node,
        tls,
        offline_spend: fleet.offline_spend,
    })
}

/// An endpoint's scheme and port: `http://HOST:PORT` or `https://HOST:PORT`.
fn endpoint_parts(endpoint: &str) -> Result<(&str, u16), String> {
    let form = || format!("`{endpoint}` is not of the form http://HOST:PORT or https://HOST:PORT");
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(form)?;
    if scheme != "http" && scheme != "https" {
        return Err(form());
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(form)?;
    let port: u16 = port.parse().map_err(|_| form())?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || port == 0 || (!bracketed && host.contains([':', '/', '[', ']'])) {
        return Err(form());
    }
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err(form());
    }
    Ok((scheme, port))
}

/// Where a prefix's problem is, if it has one.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let fine = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix.bytes().all(|b| b.is_ascii_graphic());
    if fine {
        Ok(())
    } else {
        Err(format!(
            "`{prefix}` is not a key prefix such as \"/xknock/prod\" (a leading `/`, none at the end, no spaces)"
        ))
    }
}

/// Whether `node` can name a host in keys and logs.
fn check_node(node: &str) -> Result<(), String> {
    let fine = !node.is_empty()
        && node.len() <= MAX_NODE
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "`{node}` is not a node name: 1 to {MAX_NODE} letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// The TLS files, which go with `https://` endpoints only.
fn tls(
    fleet: &FileFleet,
    https: bool,
    report: &Report<'_>,
) -> Result<Option<FleetTls>, ConfigError> {
    let written = [&fleet.ca_file, &fleet.cert_file, &fleet.key_file];
    let names = ["ca_file", "cert_file", "key_file"];
    if !https {
        if let Some((file, name)) = written
            .iter()
            .zip(names)
            .find_map(|(f, n)| Some((f.as_ref()?, n)))
        {
            return Err(report.invalid(
                file.span(),
                &format!("fleet: {name}"),
                "TLS files go with https:// endpoints; these are http://".into(),
            ));
        }
        return Ok(None);
    }
    let pem = |index: usize| -> Result<Option<String>, ConfigError> {
        let (Some(file), Some(loaded)) = (written[index], &fleet.tls_files[index]) else {
            return Ok(None);
        };
        read_pem(file, loaded).map(Some).map_err(|problem| {
            report.invalid(file.span(), &format!("fleet: {}", names[index]), problem)
        })
    };
    let Some(ca_pem) = pem(0)? else {
        return Err(report.invalid(
            fleet.etcd.span(),
            "fleet: ca_file",
            "https:// endpoints need `ca_file`, the certificate authority that signed etcd's certificates".into(),
        ));
    };
    let identity = match (pem(1)?, pem(2)?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (cert, _) => {
            let (missing, given) = if cert.is_some() {
                ("key_file", &fleet.cert_file)
            } else {
                ("cert_file", &fleet.key_file)
            };
            return Err(report.invalid(
                given.as_ref().map_or(0..0, Spanned::span),
                &format!("fleet: {missing}"),
                "`cert_file` and `key_file` go together: a client certificate and its key".into(),
            ));
        }
    };
    Ok(Some(FleetTls { ca_pem, identity }))
}

/// A PEM file's text, or what is wrong with it.
fn read_pem(file: &Spanned<std::path::PathBuf>, loaded: &Loaded) -> Result<String, String> {
    let text = loaded
        .text
        .as_ref()
        .map_err(|error| format!("cannot read {}: {error}", loaded.path.display()))?;
    if !text.contains("-----BEGIN ") {
        return Err(format!(
            "{} ({}) holds no PEM block",
            loaded.path.display(),
            file.get_ref().display()
        ));
    }
    Ok(text.clone())
}

/// The fleet's own traffic beside the rules: a TCP knock step on one of
/// etcd's ports would stop what an etcd member on this host is
/// sent. (Protecting one is the operator's explicit choice, and allowed.)
pub(super) fn own_traffic(
    fleet: &Fleet,
    file: &FileFleet,
    rules: &[Rule],
    spans: &[Range<usize>],
    report: &Report<'_>,
) -> Result<(), ConfigError> {
    let ports: Vec<u16> = fleet
        .endpoints
        .iter()
        .filter_map(|e| endpoint_parts(e).ok().map(|(_, port)| port))
        .collect();
    for (rule, span) in rules.iter().zip(spans) {
        let etcd_step = rule
            .sequence()
            .iter()
            .find(|step| step.0.proto == IPPROTO_TCP && ports.contains(&step.0.port));
        if let Some(step) = etcd_step {
            return Err(report.invalid(
                span.clone(),
                &format!("rule `{}`: sequence", rule.name),
                format!(
                    "{step} is a port of etcd ({}); the fleet's own traffic is never a knock",
                    file.etcd
                        .get_ref()
                        .iter()
                        .map(|e| e.get_ref().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_urls_with_a_port() {
        assert_eq!(endpoint_parts("http://10.0.0.5:2379"), Ok(("http", 2379)));
        assert_eq!(
            endpoint_parts("https://etcd.example:2379"),
            Ok(("https", 2379))
        );
        assert_eq!(endpoint_parts("http://[fd00::5]:2379"), Ok(("http", 2379)));
        for bad in [
            "10.0.0.5:2379",
            "http://10.0.0.5",
            "http://:2379",
            "ftp://10.0.0.5:2379",
            "http://10.0.0.5:0",
            "http://10.0.0.5:2379/v3",
            "http://fd00::5:2379",
            "http://user@host:2379",
        ] {
            assert!(endpoint_parts(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prefixes_and_nodes() {
        assert!(check_prefix("/xknock/prod").is_ok());
        for bad in ["xknock", "/", "/xknock/", "/a//b", "/a b"] {
            assert!(check_prefix(bad).is_err(), "{bad} accepted");
        }
        assert!(check_node("bastion-1.example").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_node(bad).is_err(), "{bad} accepted");
        }
    }
}
