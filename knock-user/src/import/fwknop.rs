//! `xknock import-fwknop access.conf [--fwknopd-conf fwknopd.conf]`:
//! fwknopd's access stanzas carried over as `[[spa]]` entries, with the SPA
//! port and packet age of its fwknopd.conf. What cannot be carried over is
//! a warning naming its line; a stanza xknock could only serve differently
//! (GPG, the legacy IV mode, digests other than SHA-256, no HMAC key, no
//! OPEN_PORTS) is left out, with the reason.

use std::{fmt::Write as _, net::IpAddr};

use base64::Engine as _;
use ipnet::IpNet;

use super::knockd::Imported;
use crate::config::{Config, spa::DEFAULT_LISTEN};

/// fwknopd's `FW_ACCESS_TIMEOUT` when a stanza sets none.
const DEFAULT_ACCESS_TIMEOUT_SECS: u64 = 30;

/// Why the files could not be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum FwknopImportError {
    #[error("line {0}: `{1}` comes before any SOURCE line, which starts a stanza")]
    Orphan(usize, String),
    #[error("nothing to carry over: no stanza could become an [[spa]] entry")]
    NothingCarried,
    /// The result does not validate (keys fwknop would refuse too, say).
    #[error("the converted configuration is not valid ({0}):\n{1}")]
    Invalid(String, String),
}

/// One `KEY value` line of a fwknop file.
struct Line {
    number: usize,
    key: String,
    value: String,
}

/// The `KEY value` lines of a fwknop file (values lose a trailing `;`, as
/// fwknopd.conf writes them); comments and blank lines go.
fn lines(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                return None;
            }
            let (key, value) = content
                .split_once(char::is_whitespace)
                .unwrap_or((content, ""));
            Some(Line {
                number: i + 1,
                key: key.to_owned(),
                value: value.trim().trim_end_matches(';').trim().to_owned(),
            })
        })
        .collect()
}

/// What fwknopd.conf gives every entry: the SPA port, the packets' age.
struct Daemon {
    listen: u16,
    max_age_secs: Option<u64>,
}

fn daemon(text: Option<&str>, warnings: &mut Vec<String>) -> Daemon {
    let mut daemon = Daemon {
        listen: DEFAULT_LISTEN,
        max_age_secs: None,
    };
    for line in text.map(lines).unwrap_or_default() {
        let at = |what: &str| format!("fwknopd.conf line {}: {}: {what}", line.number, line.key);
        match line.key.as_str() {
            "PCAP_FILTER" => match pcap_udp_port(&line.value) {
                Some(port) => daemon.listen = port,
                None => warnings.push(at(&format!(
                    "`{}` names no one UDP port; udp:{DEFAULT_LISTEN} assumed (set each entry's `listen`)",
                    line.value
                ))),
            },
            "MAX_SPA_PACKET_AGE" => match line.value.parse() {
                Ok(secs) => daemon.max_age_secs = Some(secs),
                Err(_) => warnings.push(at("not a number of seconds; xknock's default kept")),
            },
            "ENABLE_SPA_PACKET_AGING" if line.value.eq_ignore_ascii_case("N") => warnings.push(
                at("xknock always refuses packets older than `max_age`; aging stays on"),
            ),
            "ENABLE_DIGEST_PERSISTENCE" if line.value.eq_ignore_ascii_case("N") => warnings.push(
                at("xknock always remembers accepted packets across restarts"),
            ),
            _ => {}
        }
    }
    daemon
}

/// The UDP port of a PCAP_FILTER such as `udp port 62201` or `udp dst port
/// 62201`; none for anything else.
fn pcap_udp_port(filter: &str) -> Option<u16> {
    let words: Vec<&str> = filter.split_whitespace().collect();
    match words.as_slice() {
        ["udp", "port", port] | ["udp", "dst", "port", port] => port.parse().ok(),
        _ => None,
    }
}

/// One access stanza, from its SOURCE line to the next.
struct Stanza {
    line: usize,
    lines: Vec<Line>,
}

/// Converts fwknopd's access.conf (and its fwknopd.conf, if given).
pub fn import_fwknop(
    access_conf: &str,
    fwknopd_conf: Option<&str>,
) -> Result<Imported, FwknopImportError> {
    let mut out = Imported::default();
    let daemon = daemon(fwknopd_conf, &mut out.warnings);
    let mut stanzas: Vec<Stanza> = Vec::new();
    for line in lines(access_conf) {
        if line.key == "SOURCE" {
            stanzas.push(Stanza {
                line: line.number,
                lines: Vec::new(),
            });
        } else if line.key.starts_with('%') {
            out.warnings.push(format!(
                "line {}: {}: included files are not followed; import them on their own",
                line.number, line.key
            ));
            continue;
        }
        let Some(stanza) = stanzas.last_mut() else {
            return Err(FwknopImportError::Orphan(line.number, line.key));
        };
        stanza.lines.push(line);
    }
    let mut entries = String::new();
    let named = stanzas.len() > 1;
    for (i, stanza) in stanzas.iter().enumerate() {
        let name = if named {
            format!("fwknop-{}", i + 1)
        } else {
            "fwknop".to_owned()
        };
        if let Some(entry) = convert(stanza, &name, &daemon, &mut out.warnings) {
            entries.push_str(&entry);
        }
    }
    if entries.is_empty() {
        return Err(FwknopImportError::NothingCarried);
    }
    out.toml = format!(
        "# Converted from fwknopd's access.conf by `xknock import-fwknop`.\n\
         # It holds SPA keys: keep it where only root reads it (`chmod 600`).\n{entries}"
    );
    match Config::parse(&out.toml) {
        Ok(config) => out.warnings.extend(config.warnings),
        Err(error) => return Err(FwknopImportError::Invalid(error.to_string(), out.toml)),
    }
    Ok(out)
}

/// A yes of fwknop's (`Y`).
fn yes(value: &str) -> bool {
    value.eq_ignore_ascii_case("Y") || value.eq_ignore_ascii_case("yes")
}

/// A raw fwknop key as `key_base64` takes it.
fn base64_of(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
}

/// `OPEN_PORTS` (`tcp/22, udp/1194`) as `protect`, or what is wrong.
fn ports(value: &str) -> Result<Vec<String>, String> {
    value
        .split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|port| {
            let (proto, number) = port
                .split_once('/')
                .ok_or_else(|| format!("`{port}` is not PROTO/PORT"))?;
            let proto = proto.to_ascii_lowercase();
            let number: u16 = number
                .parse()
                .map_err(|_| format!("`{port}` has no port number"))?;
            if (proto != "tcp" && proto != "udp") || number == 0 {
                return Err(format!("`{port}` is not a TCP or UDP port"));
            }
            Ok(format!("\"{proto}:{number}\""))
        })
        .collect()
}

/// `SOURCE` as `source` prefixes; none for `ANY`.
fn sources(value: &str) -> Result<Vec<String>, String> {
    if value.eq_ignore_ascii_case("ANY") {
        return Ok(Vec::new());
    }
    value
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(|source| {
            source
                .parse::<IpNet>()
                .or_else(|_| source.parse::<IpAddr>().map(IpNet::from))
                .map(|net| format!("\"{}\"", net.trunc()))
                .map_err(|_| format!("`{source}` is not an address or prefix"))
        })
        .collect()
}

/// One stanza as an `[[spa]]` entry, or `None` (with the reason) when
/// xknock cannot serve it as fwknopd does.
fn convert(
    stanza: &Stanza,
    name: &str,
    daemon: &Daemon,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let mut key = None;
    let mut hmac_key = None;
    let mut protect = None;
    let mut open_for = DEFAULT_ACCESS_TIMEOUT_SECS;
    let mut require_source_address = false;
    let mut source = Vec::new();
    let mut gpg = None;
    let left_out = |line: &Line, why: &str| {
        format!(
            "line {}: {}: {why}; the stanza of line {} is left out",
            line.number, line.key, stanza.line
        )
    };
    for line in &stanza.lines {
        let value = line.value.as_str();
        let not_carried = |what: &str| {
            format!(
                "line {}: {}: not carried over ({what})",
                line.number, line.key
            )
        };
        match line.key.as_str() {
            "SOURCE" => match sources(value) {
                Ok(prefixes) => source = prefixes,
                Err(problem) => {
                    warnings.push(left_out(line, &problem));
                    return None;
                }
            },
            "KEY_BASE64" => key = Some(value.to_owned()),
            "KEY" => key = Some(base64_of(value)),
            "HMAC_KEY_BASE64" => hmac_key = Some(value.to_owned()),
            "HMAC_KEY" => hmac_key = Some(base64_of(value)),
            "OPEN_PORTS" => match ports(value) {
                Ok(list) => protect = Some(list),
                Err(problem) => {
                    warnings.push(left_out(line, &problem));
                    return None;
                }
            },
            "FW_ACCESS_TIMEOUT" => match value.parse() {
                Ok(secs) if secs > 0 => open_for = secs,
                _ => {
                    warnings.push(left_out(line, "not a number of seconds"));
                    return None;
                }
            },
            "REQUIRE_SOURCE_ADDRESS" | "REQUIRE_SOURCE" => require_source_address = yes(value),
            "HMAC_DIGEST_TYPE" if !value.eq_ignore_ascii_case("SHA256") => {
                warnings.push(left_out(line, "xknock checks HMAC-SHA256 only"));
                return None;
            }
            "ENCRYPTION_MODE" if !value.eq_ignore_ascii_case("CBC") => {
                warnings.push(left_out(
                    line,
                    "xknock decrypts AES-256-CBC with fwknop's salted key derivation only (not the legacy IV mode)",
                ));
                return None;
            }
            "HMAC_DIGEST_TYPE" | "ENCRYPTION_MODE" => {}
            key if key.starts_with("GPG_") => {
                gpg.get_or_insert(line.number);
            }
            "RESTRICT_PORTS" => warnings.push(not_carried(
                "the entry opens only what OPEN_PORTS lists, as `protect`",
            )),
            "MAX_FW_TIMEOUT" => warnings.push(not_carried(
                "a client's timeout (-f) can only shorten `open_for` in xknock",
            )),
            "DESTINATION" => warnings.push(not_carried(
                "xknock guards the host it runs on, whatever the destination",
            )),
            "ACCESS_EXPIRE" | "ACCESS_EXPIRE_EPOCH" => {
                warnings.push(not_carried("the entry does not expire: remove it by then"));
            }
            "REQUIRE_USERNAME" => warnings.push(not_carried("xknock does not check the username")),
            "ENABLE_CMD_EXEC" | "ENABLE_CMD_SUDO_EXEC" => {
                if yes(value) {
                    warnings.push(not_carried("xknock runs no commands"));
                }
            }
            key if key.starts_with("CMD_") => {
                warnings.push(not_carried("xknock runs no commands"));
            }
            "FORCE_NAT" | "FORCE_SNAT" | "FORCE_MASQUERADE" | "DISABLE_DNAT" | "FORWARD_ALL" => {
                warnings.push(not_carried("xknock does no NAT or forwarding"));
            }
            _ => warnings.push(not_carried("an option xknock does not know")),
        }
    }
    let stanza_at = format!("the stanza of line {}", stanza.line);
    let Some(key) = key else {
        warnings.push(match gpg {
            Some(line) => format!(
                "line {line}: GPG keys: xknock decrypts with a shared key only (KEY or KEY_BASE64); {stanza_at} is left out"
            ),
            None => format!("{stanza_at} has no KEY or KEY_BASE64 and is left out"),
        });
        return None;
    };
    if let Some(line) = gpg {
        warnings.push(format!(
            "line {line}: GPG keys: not carried over (the shared key is)"
        ));
    }
    let Some(hmac_key) = hmac_key else {
        warnings.push(format!(
            "{stanza_at} has no HMAC_KEY or HMAC_KEY_BASE64 (xknock authenticates every packet) and is left out"
        ));
        return None;
    };
    let Some(protect) = protect else {
        warnings.push(format!(
            "{stanza_at} has no OPEN_PORTS: fwknopd opens whatever port a client names, xknock only ports it protects; add OPEN_PORTS and import again, or write `protect`; the stanza is left out"
        ));
        return None;
    };
    let mut entry = String::new();
    let _ = writeln!(
        entry,
        "\n# From the stanza of access.conf line {}.",
        stanza.line
    );
    let _ = writeln!(entry, "[[spa]]\nname = \"{name}\"");
    let _ = writeln!(entry, "listen = \"udp:{}\"", daemon.listen);
    let _ = writeln!(entry, "key_base64 = \"{key}\"");
    let _ = writeln!(entry, "hmac_key_base64 = \"{hmac_key}\"");
    let _ = writeln!(entry, "open_for = \"{open_for}s\"");
    let _ = writeln!(entry, "protect = [{}]", protect.join(", "));
    if let Some(secs) = daemon.max_age_secs {
        let _ = writeln!(entry, "max_age = \"{secs}s\"");
    }
    if require_source_address {
        let _ = writeln!(entry, "require_source_address = true");
    }
    if !source.is_empty() {
        let _ = writeln!(entry, "source = [{}]", source.join(", "));
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=";
    const HMAC_KEY: &str =
        "Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw==";

    fn converted(access: &str, fwknopd: Option<&str>) -> (Config, Vec<String>) {
        let imported = import_fwknop(access, fwknopd).expect("converts");
        let config = Config::parse(&imported.toml).expect("valid");
        (config, imported.warnings)
    }

    #[test]
    fn a_stanza_becomes_an_entry_with_its_keys_ports_timeout_sources_and_port() {
        let access = format!(
            "# fwknopd access.conf\nSOURCE              192.168.10.0/24, 10.1.1.1\nKEY_BASE64          {KEY}\n\
             HMAC_KEY_BASE64     {HMAC_KEY}\nOPEN_PORTS          tcp/22, udp/1194\nFW_ACCESS_TIMEOUT   45\n\
             REQUIRE_SOURCE_ADDRESS Y\n"
        );
        let fwknopd =
            "PCAP_FILTER                 udp port 62299;\nMAX_SPA_PACKET_AGE          90;\n";
        let (config, warnings) = converted(&access, Some(fwknopd));
        assert!(warnings.is_empty(), "{warnings:?}");
        let [entry] = config.rules.as_slice() else {
            panic!("one entry: {:?}", config.rules)
        };
        assert_eq!(entry.name, "fwknop");
        assert_eq!(entry.open_for.as_secs(), 45);
        let protect: Vec<String> = entry.protect.iter().map(ToString::to_string).collect();
        assert_eq!(protect, ["tcp:22", "udp:1194"]);
        let spa = entry.spa().expect("an SPA entry");
        assert_eq!((spa.listen, spa.max_age.as_secs()), (62299, 90));
        assert!(spa.require_source_address);
        let sources: Vec<String> = spa.sources.iter().map(|p| p.0.to_string()).collect();
        assert_eq!(sources, ["192.168.10.0/24", "10.1.1.1/32"]);
        let written = Config::parse(&format!(
            "[[spa]]\nname = \"fwknop\"\nlisten = \"udp:62299\"\nkey_base64 = \"{KEY}\"\nhmac_key_base64 = \"{HMAC_KEY}\"\n\
             open_for = \"45s\"\nprotect = [\"tcp:22\", \"udp:1194\"]\nmax_age = \"90s\"\nrequire_source_address = true\n\
             source = [\"192.168.10.0/24\", \"10.1.1.1\"]\n"
        ))
        .expect("valid");
        assert_eq!(config.rules, written.rules, "keys and all");
    }

    #[test]
    fn plain_keys_and_defaults_carry_over() {
        let access =
            "SOURCE ANY\nKEY secretkey12\nHMAC_KEY hmackey0123456789\nOPEN_PORTS tcp/2222\n";
        let (config, warnings) = converted(access, None);
        assert!(warnings.is_empty(), "{warnings:?}");
        let spa = config.rules[0].spa().expect("SPA");
        assert_eq!((spa.listen, spa.max_age.as_secs()), (62201, 120));
        assert!(spa.sources.is_empty(), "ANY");
        assert_eq!(config.rules[0].open_for.as_secs(), 30, "fwknopd's default");
        let written = Config::parse(&format!(
            "[[spa]]\nname = \"fwknop\"\nkey_base64 = \"{}\"\nhmac_key_base64 = \"{}\"\nopen_for = \"30s\"\nprotect = [\"tcp:2222\"]\n",
            base64_of("secretkey12"),
            base64_of("hmackey0123456789")
        ))
        .expect("valid");
        assert_eq!(config.rules, written.rules, "the raw keys, base64");
    }

    #[test]
    fn what_cannot_be_served_alike_is_left_out_and_the_rest_warned_of() {
        let access = format!(
            "SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC_KEY}\nOPEN_PORTS tcp/22\n\
             ENABLE_CMD_EXEC Y\nCMD_EXEC_USER nobody\nFORCE_NAT 192.168.1.2 22\nMAX_FW_TIMEOUT 600\n\
             GPG_REMOTE_ID 1234ABCD\nSOMETHING_NEW 1\n\
             SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC_KEY}\nOPEN_PORTS tcp/22\nHMAC_DIGEST_TYPE SHA512\n\
             SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC_KEY}\nOPEN_PORTS tcp/22\nENCRYPTION_MODE legacy\n\
             SOURCE ANY\nKEY_BASE64 {KEY}\nOPEN_PORTS tcp/22\n\
             SOURCE ANY\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC_KEY}\n\
             SOURCE ANY\nGPG_DECRYPT_ID ABCD\nGPG_REMOTE_ID 1234ABCD\nOPEN_PORTS tcp/22\n"
        );
        let (config, warnings) = converted(&access, None);
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["fwknop-1"], "{warnings:#?}");
        for (line, said) in [
            (5, "xknock runs no commands"),
            (6, "xknock runs no commands"),
            (7, "no NAT"),
            (8, "can only shorten"),
            (9, "GPG keys: not carried over"),
            (10, "does not know"),
            (15, "HMAC-SHA256 only; the stanza of line 11 is left out"),
            (20, "legacy IV mode"),
            (21, "has no HMAC_KEY"),
            (24, "has no OPEN_PORTS"),
            (28, "GPG keys: xknock decrypts with a shared key only"),
        ] {
            let key = if said.starts_with("has no") {
                format!("the stanza of line {line} {said}")
            } else {
                format!("line {line}: ")
            };
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(&key) && w.contains(said)),
                "line {line}: {said}: {warnings:#?}"
            );
        }
    }

    #[test]
    fn nothing_carried_and_orphan_lines_are_errors() {
        let e = import_fwknop("KEY_BASE64 x\n", None).expect_err("orphan");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = import_fwknop("SOURCE ANY\nKEY_BASE64 x\n", None).expect_err("nothing");
        assert!(matches!(e, FwknopImportError::NothingCarried), "{e}");
        // Debian's shipped access.conf: placeholders, refused as keys.
        let e = import_fwknop(
            "SOURCE ANY\nKEY_BASE64 __CHANGEME__\nHMAC_KEY_BASE64 __CHANGEME__\nOPEN_PORTS tcp/22\n",
            None,
        )
        .expect_err("placeholder keys");
        assert!(matches!(e, FwknopImportError::Invalid(..)), "{e}");
        assert_eq!(pcap_udp_port("udp dst port 4000"), Some(4000));
        assert_eq!(pcap_udp_port("udp port 1 or udp port 2"), None);
    }
}
