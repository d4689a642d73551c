//! What SPA costs: the loader's check of one packet (fwknop's format: HMAC,
//! AES, fields, the pinned replay cache), and a flood of junk at the SPA
//! port against XDP_DROP in the same rounds.

use std::time::SystemTime;

use xknock::daemon::spa::{Judge, Verdict};

use super::*;

/// fwknop's keys for the bench's `[[spa]]` entry.
const SPA: &str = "[[spa]]\nname = \"fwknop\"\nlisten = \"udp:62201\"\n\
    key_base64 = \"wqpO0bCb8v0WXmVOiK2LDsWbx84d7V5NzC4dgQlcCRM=\"\n\
    hmac_key_base64 = \"Kxo4R01PrSUXAbpKKe7vuuDrh6OMLbiCHoSWxdfz3fsyHcIp/A2VYw8JMusAK9W5ZlAqBzEtx/grXJr5Rg/5Mw==\"\n\
    open_for = \"30s\"\nprotect = [\"tcp:22\"]\n";

pub(crate) const SPA_PORT: u16 = 62201;

/// The bench's rule and an SPA entry, stopped packets dropped silently.
pub(crate) fn spa_config() -> anyhow::Result<Config> {
    Ok(Config::parse(&format!(
        "{SILENT}[[rule]]\nname = \"ssh\"\nsequence = [\"tcp:7291\", \"udp:4728\", \"tcp:6742\"]\n\
         sequence_timeout = \"10s\"\nopen_for = \"60s\"\nprotect = [\"tcp:22\"]\n{SPA}"
    ))?)
}

/// A junk datagram of fwknop's usual size to the SPA port, addressed for
/// the flood generator (which rewrites the IPv4 source and, harmlessly, a
/// payload byte; the UDP checksum is left out, as IPv4 allows).
pub(crate) fn junk_template(lab: &Lab) -> Vec<u8> {
    let frame = Frame {
        payload: 200,
        ..Frame::udp(ip(CLIENT), ip(SERVER), SPA_PORT)
    };
    let mut bytes = frame.build().0;
    bytes[0..6].copy_from_slice(&lab::wire::mac_of(&lab.server, &lab.server_if));
    bytes[6..12].copy_from_slice(&lab::wire::mac_of(&lab.client, &lab.client_if));
    bytes
}

pub(crate) struct SpaCosts {
    /// Microseconds per packet the loader checks: a fresh valid packet
    /// (granted), a replay of it, and junk (refused at the HMAC).
    pub rows: Vec<(&'static str, Stat)>,
}

/// Times `judge` over `packets` (each once) in `effort.trials` rounds;
/// microseconds per packet.
fn per_packet(
    effort: &Effort,
    rounds: impl Fn(usize) -> anyhow::Result<Vec<Vec<u8>>>,
    mut judge: impl FnMut(&[u8]) -> anyhow::Result<Verdict>,
    expect: fn(&Verdict) -> bool,
) -> anyhow::Result<Stat> {
    let mut samples = Vec::with_capacity(effort.trials);
    for round in 0..effort.trials {
        let packets = rounds(round)?;
        let start = Instant::now();
        for packet in &packets {
            let verdict = judge(packet)?;
            ensure!(expect(&verdict), "unexpected SPA verdict {verdict:?}");
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / packets.len() as f64);
    }
    Ok(Stat::of(samples))
}

pub(crate) fn spa_costs(effort: &Effort) -> anyhow::Result<SpaCosts> {
    let config = spa_config()?;
    let slots = config.slots_in_order();
    let mut filter = Filter::load(&KernelConfig::try_from(&config)?)?;
    let judge = Judge::new(&config, &slots);
    let rule = &config.rules[1];
    let spa = rule.spa().context("an SPA entry")?;
    let source = key_addr(ip(CLIENT));
    let batch = 200;
    let fresh = |_| {
        (0..batch)
            .map(|_| {
                xknock::client::spa::request(rule, spa, Some(ip(CLIENT)), SystemTime::now())
                    .map(String::into_bytes)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let granted = per_packet(
        effort,
        fresh,
        |p| Ok(judge.judge(&source, SPA_PORT, p, SystemTime::now(), filter.maps_mut())?),
        |v| matches!(v, Verdict::Grant(_)),
    )?;
    let replayed_packets = fresh(0)?;
    for packet in &replayed_packets {
        judge.judge(
            &source,
            SPA_PORT,
            packet,
            SystemTime::now(),
            filter.maps_mut(),
        )?;
    }
    let replays = per_packet(
        effort,
        |_| Ok(replayed_packets.clone()),
        |p| Ok(judge.judge(&source, SPA_PORT, p, SystemTime::now(), filter.maps_mut())?),
        |v| {
            matches!(
                v,
                Verdict::Refuse {
                    reason: xknock::daemon::spa::SpaRefusal::Replay,
                    ..
                }
            )
        },
    )?;
    // Junk of an SPA packet's size and alphabet: what a flood gets past
    // the kernel's size check.
    let junk = |round: usize| {
        Ok((0..batch)
            .map(|i| {
                let seed = (round * batch + i) as u64;
                (0..200u64)
                    .map(|j| {
                        let x = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(j.wrapping_mul(1442695040888963407))
                            >> 58;
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                            [x as usize]
                    })
                    .collect()
            })
            .collect())
    };
    let junk_cost = per_packet(
        effort,
        junk,
        |p| Ok(judge.judge(&source, SPA_PORT, p, SystemTime::now(), filter.maps_mut())?),
        |v| {
            matches!(
                v,
                Verdict::Refuse {
                    reason: xknock::daemon::spa::SpaRefusal::BadHmac,
                    ..
                }
            )
        },
    )?;
    Ok(SpaCosts {
        rows: vec![
            (
                "a fresh packet: checked, decrypted, remembered, granted",
                granted,
            ),
            ("the same packet again: a replay (one map lookup)", replays),
            (
                "junk of an SPA packet's size: refused at the HMAC",
                junk_cost,
            ),
        ],
    })
}

pub(crate) fn render(md: &mut String, costs: &SpaCosts, flood: &[FloodRow]) {
    let _ = writeln!(
        md,
        "\n## Single Packet Authorization\n\nThe loader's check of one datagram the filter handed over \
         (one CPU, the pinned replay map through the bpf syscall, as `xknock run` does):\n\n\
         | packet | µs per packet (median) | range | packets per second |\n| --- | ---: | ---: | ---: |"
    );
    for (what, stat) in &costs.rows {
        let _ = writeln!(
            md,
            "| {what} | {:.1} | {:.1}-{:.1} | {:.0} |",
            stat.median,
            stat.min,
            stat.max,
            1e6 / stat.median
        );
    }
    let _ = writeln!(
        md,
        "\nThe filter hands each CPU's first `spa_datagrams_per_second` (100) datagrams a second to the \
         loader and sheds the rest, so a junk flood at the SPA port costs the loader at most that many \
         checks per CPU and second. The flood itself, spoofed 200-byte datagrams at udp:62201, against \
         the bare XDP_DROP program in the same rounds:\n"
    );
    flood_table(md, "datagrams stopped per second", flood);
}
