//! Answers read as named fields, to compare one with another.

use std::{cell::RefCell, collections::HashMap};

use knock_common::checksum::{Sum, pseudo_v4, pseudo_v6};

use super::{ICMP, ICMPV6, Probe, TCP, anchor, be16};

/// (Addresses, the prober's port, flow label) of a TCP answer.
type LabelKey = (Vec<u8>, u16, u32);

thread_local! {
    /// The flow label of each TCP answer seen by `fields`, by (addresses,
    /// the prober's port, label): the server port it first came from.
    static LABELS: RefCell<HashMap<LabelKey, u16>> = RefCell::default();
}

/// An answer as named fields: every header field, with checksums replaced
/// by whether they verify, the probed port by `PORT`, and a quoted probe by
/// how much of it (or of which fragment) is quoted and where the quote
/// differs. Nothing is masked: what the kernel computes from a counter or a
/// secret is shown against what it must equal wherever the kernel answers,
/// so two probes that the kernel answers alike read alike. The IPv4 ID of
/// an answer without DF is read against the echo reply `exchange` provoked
/// right after it (the kernel's per-peer counter hands out both); an
/// ICMPv6 error's flow label is shown as it is (the kernel hashes its type
/// and code, the same for every port); a TCP answer's (a keyed hash of its
/// flow, so it differs by port) as its own, or as that of another port when
/// two ports' answers share one; a timestamp of now in an IPv4 option (or
/// in a quoted one) as `<now>`.
pub fn fields(frame: &[u8], probe: &Probe) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut put = |name: &str, value: String| out.push((name.to_owned(), value));
    let port = |p: u16| {
        if p == probe.dst_port {
            "PORT".to_owned()
        } else {
            p.to_string()
        }
    };
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    put("eth.dst", hex(&frame[0..6]));
    put("eth.src", hex(&frame[6..12]));
    put("eth.type", hex(&frame[12..14]));
    let ip = &frame[14..];
    let (proto, l4, pseudo) = if ip[0] >> 4 == 4 {
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2));
        put("ip.version_ihl", hex(&ip[0..1]));
        put("ip.tos", hex(&ip[1..2]));
        put("ip.total_length", total.to_string());
        put("ip.id", ip_id(frame));
        put("ip.flags_fragment", hex(&ip[6..8]));
        put("ip.ttl", ip[8].to_string());
        put("ip.protocol", ip[9].to_string());
        put(
            "ip.checksum",
            verifies(Sum::ZERO.slice(&ip[..header_len]), false),
        );
        put("ip.src", hex(&ip[12..16]));
        put("ip.dst", hex(&ip[16..20]));
        put("ip.options", options(&ip[20..header_len]));
        put("frame.padding", (ip.len() - total).to_string());
        let l4 = &ip[header_len..total];
        let pseudo = pseudo_v4(
            &ip[12..16].try_into().unwrap(),
            &ip[16..20].try_into().unwrap(),
            ip[9],
            l4.len() as u16,
        );
        (ip[9], l4, pseudo)
    } else {
        let payload = usize::from(be16(ip, 4));
        put("ip6.version", (ip[0] >> 4).to_string());
        put(
            "ip6.traffic_class",
            format!("{:02x}", (ip[0] << 4) | (ip[1] >> 4)),
        );
        let label = be32(ip, 0) & 0x000f_ffff;
        put("ip6.flow_label", flow_label(ip, label));
        put("ip6.payload_length", payload.to_string());
        put("ip6.next_header", ip[6].to_string());
        put("ip6.hop_limit", ip[7].to_string());
        put("ip6.src", hex(&ip[8..24]));
        put("ip6.dst", hex(&ip[24..40]));
        let l4 = &ip[40..40 + payload];
        let pseudo = pseudo_v6(
            &ip[8..24].try_into().unwrap(),
            &ip[24..40].try_into().unwrap(),
            ip[6],
            payload as u32,
        );
        (ip[6], l4, pseudo)
    };
    match proto {
        TCP => {
            put("tcp.src_port", port(be16(l4, 0)));
            put("tcp.dst_port", port(be16(l4, 2)));
            put("tcp.seq", format!("{:08x}", be32(l4, 4)));
            put("tcp.ack", format!("{:08x}", be32(l4, 8)));
            put("tcp.data_offset", (l4[12] >> 4).to_string());
            put("tcp.flags", format!("{:02x}", l4[13]));
            put("tcp.window", be16(l4, 14).to_string());
            // The kernel leaves an IPv6 RST's checksum to offload (the
            // pseudo-header sum alone), which a real NIC completes.
            let offloaded = be16(l4, 16) == pseudo.folded();
            put("tcp.checksum", verifies(pseudo.slice(l4), offloaded));
            put("tcp.urgent", be16(l4, 18).to_string());
            put("tcp.rest", hex(&l4[20..]));
        }
        ICMP | ICMPV6 => {
            put("icmp.type", l4[0].to_string());
            put("icmp.code", l4[1].to_string());
            let sum = if proto == ICMP { Sum::ZERO } else { pseudo };
            put("icmp.checksum", verifies(sum.slice(l4), false));
            put("icmp.rest_of_header", hex(&l4[4..8]));
            put("icmp.quote", quote(&l4[8..], probe));
        }
        other => put("unexpected protocol", other.to_string()),
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The IPv4 ID of an answer: as it is with DF (the kernel's is zero), else
/// against the echo reply that followed it.
fn ip_id(frame: &[u8]) -> String {
    let ip = &frame[14..];
    if ip[6] & 0x40 != 0 {
        return hex(&ip[4..6]);
    }
    let id = be16(ip, 4);
    match anchor(frame) {
        // The kernel's counter moves by one for each ID it hands out, plus
        // a random number below the jiffies since it last moved (none when
        // they come within one): so the echo reply's is one more, or more
        // by the IDs handed out between and the jiffies that passed (at
        // most one a millisecond). Where within that, the order in which
        // answers came decides, so all of it reads alike.
        Some((echo, allowance)) => match echo.wrapping_sub(id) {
            behind if behind >= 1 && u32::from(behind) <= 1 + allowance => {
                "from the counter of the next echo reply's".into()
            }
            behind => format!("the next echo reply's - {behind}"),
        },
        None => format!("{} (no echo reply after it)", hex(&ip[4..6])),
    }
}

/// An IPv6 answer's flow label: as it is for ICMPv6 (the kernel hashes the
/// ICMP type and code, not the probe, so every port gets the same); for a
/// TCP answer, whether another server port's answer had it too.
fn flow_label(ip: &[u8], label: u32) -> String {
    if label == 0 || ip[6] != TCP || ip.len() < 44 {
        return format!("{label:05x}");
    }
    let (server_port, client_port) = (be16(ip, 40), be16(ip, 42));
    let key = (ip[8..40].to_vec(), client_port, label);
    let first = LABELS.with_borrow_mut(|labels| *labels.entry(key).or_insert(server_port));
    if first == server_port {
        "a hash of this flow".into()
    } else {
        format!("the same as from port {first}")
    }
}

/// Milliseconds since midnight UTC, as an IPv4 timestamp option counts.
fn now_ms() -> u32 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    ((since.as_secs() % 86_400) * 1000 + u64::from(since.subsec_millis())) as u32
}

/// The byte ranges of the timestamps a host filled in the IPv4 options
/// `opts`.
fn timestamps(opts: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    let mut stamps = Vec::new();
    while at < opts.len() {
        match opts[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*opts.get(at + 1).unwrap_or(&0));
                if len < 2 || at + len > opts.len() {
                    break;
                }
                if kind == 68 && len >= 4 {
                    let filled = usize::from(opts[at + 2]).saturating_sub(1).min(len);
                    let step = if opts[at + 3] & 0x0f == 0 { 4 } else { 8 };
                    let mut slot = 4;
                    while slot + step <= filled {
                        let stamp = at + slot + step - 4;
                        stamps.push(stamp..stamp + 4);
                        slot += step;
                    }
                }
                at += len;
            }
        }
    }
    stamps
}

/// Whether four bytes are a timestamp of now (within a minute).
fn is_now(bytes: &[u8]) -> bool {
    let stamp = u32::from_be_bytes(bytes.try_into().expect("four bytes"));
    stamp.abs_diff(now_ms()) < 60_000
}

/// IPv4 options as hex, with each timestamp that is now shown as `<now>`.
fn options(opts: &[u8]) -> String {
    let stamps = timestamps(opts);
    let mut out = String::new();
    let mut at = 0;
    while at < opts.len() {
        if let Some(stamp) = stamps.iter().find(|s| s.start == at)
            && is_now(&opts[stamp.clone()])
        {
            out.push_str("<now>");
            at += 4;
        } else {
            out.push_str(&hex(&opts[at..=at]));
            at += 1;
        }
    }
    out
}

/// What an ICMP error quotes: how much of the probe, or of which of its
/// fragments, and where the quote differs from what was sent (a host
/// fills in options it records into, as it received them).
fn quote(quoted: &[u8], probe: &Probe) -> String {
    let mut sent = vec![("the probe".to_owned(), probe.packet())];
    if !probe.split.is_empty() {
        for (i, piece) in probe.pieces().into_iter().enumerate() {
            sent.push((format!("fragment {}", i + 1), piece));
        }
    }
    let stamps = if quoted.first().is_some_and(|b| b >> 4 == 4) {
        let header_len = usize::from(quoted[0] & 0x0f) * 4;
        timestamps(quoted.get(20..header_len).unwrap_or(&[]))
            .into_iter()
            .map(|r| r.start + 20..r.end + 20)
            .collect()
    } else {
        Vec::new()
    };
    let differences = |bytes: &[u8]| -> Option<Vec<String>> {
        if quoted.len() > bytes.len() {
            return None;
        }
        let mut differ = Vec::new();
        let mut at = 0;
        while at < quoted.len() {
            if let Some(stamp) = stamps.iter().find(|s| s.start == at)
                && quoted[stamp.clone()] != bytes[stamp.clone()]
            {
                let now = if is_now(&quoted[stamp.clone()]) {
                    "<now>".into()
                } else {
                    hex(&quoted[stamp.clone()])
                };
                differ.push(format!("{at}: {now}"));
                at += 4;
            } else if quoted[at] != bytes[at] {
                differ.push(format!("{at}: {:02x}", quoted[at]));
                at += 1;
            } else {
                at += 1;
            }
        }
        Some(differ)
    };
    let best = sent
        .iter()
        .filter_map(|(name, bytes)| Some((name, bytes.len(), differences(bytes)?)))
        .min_by_key(|(_, _, differ)| differ.len());
    match best {
        Some((name, len, differ)) if differ.len() <= 12 => {
            let mut text = format!("{name}'s first {} of {len} bytes", quoted.len());
            if !differ.is_empty() {
                text.push_str(&format!(", but at {}", differ.join(", ")));
            }
            text
        }
        _ => format!("not the probe: {}", hex(quoted)),
    }
}

fn verifies(sum: Sum, offloaded: bool) -> String {
    if sum.verifies() || offloaded {
        "ok"
    } else {
        "WRONG"
    }
    .into()
}
