//! An independent model of concealment (README, "Concealment"): a packet
//! the filter stops at a knock, SPA or protected port is, with
//! `conceal = "closed"`, passed to the host's stack steered to port 0 (its
//! source port replaced by the flow's keyed hash, its checksum kept as
//! right or as wrong as it came), so that the host answers it as a closed
//! port; with `conceal = "drop"` it is dropped. Written over plain slices
//! from RFC 1071 / 1624 (the checksum), for the differential tests to
//! compare with the XDP program's output byte by byte. What the host then
//! answers is the kernel's, compared in the lab (tests/conceal*.rs).

use knock_common::{
    addr_words,
    checksum::{Sum, pseudo_v4, pseudo_v6},
    steered_port,
};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn mapped(v4: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&v4[..4]);
    out
}

pub struct Concealment {
    closed: bool,
    /// The seed of the filter's load, which keys the steered source port.
    seed: u32,
}

/// Where a stopped packet's transport header is, as the filter parses it.
struct Layers {
    /// The transport header's offset in the frame, and its protocol.
    l4: usize,
    proto: u8,
    src: [u8; 16],
    /// The pseudo-header sum of the whole segment, for a packet that is
    /// whole in this frame (no fragment).
    pseudo: Option<Sum>,
    /// Where the IP packet ends in the frame.
    end: usize,
}

impl Concealment {
    pub fn new(closed: bool, seed: u32) -> Concealment {
        Concealment { closed, seed }
    }

    /// The frame the filter passes to the host for `frame`, which it
    /// stopped; `None`: it is dropped.
    pub fn steered(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if !self.closed {
            return None;
        }
        let layers = layers(frame)?;
        let check_at = layers.l4
            + match layers.proto {
                TCP => 16,
                UDP => 6,
                _ => return None,
            };
        let l4 = layers.l4;
        let sport = [frame[l4], frame[l4 + 1]];
        let dport = [frame[l4 + 2], frame[l4 + 3]];
        let port = steered_port(
            self.seed,
            &addr_words(&layers.src),
            sport,
            dport,
            layers.proto,
        );
        let mut out = frame.to_vec();
        out[l4..l4 + 2].copy_from_slice(&port);
        out[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
        let old = u16::from_be_bytes([frame[check_at], frame[check_at + 1]]);
        let check = if layers.proto == UDP && old == 0 {
            // IPv4 without a UDP checksum: none is added.
            0
        } else {
            // The sum the field completes moves by what the ports moved.
            let sum = Sum::ZERO
                .word(!old)
                .word(!u16::from_be_bytes(sport))
                .word(!u16::from_be_bytes(dport))
                .word(u16::from_be_bytes(port));
            match !sum.folded() {
                0 if layers.proto == UDP => 0xffff,
                check => check,
            }
        };
        out[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        if let Some(pseudo) = layers.pseudo {
            // Whole in the frame: the steered segment verifies exactly when
            // the probe did, so the host drops what it would have dropped.
            let before = pseudo.slice(&frame[l4..layers.end]).verifies();
            let after = pseudo.slice(&out[l4..layers.end]).verifies();
            assert!(
                old == 0 || before == after,
                "steering changed whether the checksum verifies: {frame:02x?}"
            );
        }
        Some(out)
    }
}

/// The transport layer of a frame the filter stopped, found as the filter
/// finds it: past VLAN tags, IPv4 options and IPv6 extension headers.
fn layers(frame: &[u8]) -> Option<Layers> {
    let mut at = 12;
    let mut ethertype = be16(frame, at);
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        at += 4;
        ethertype = be16(frame.get(..at + 2)?, at);
    }
    let l3 = at + 2;
    let rest = frame.get(l3..)?;
    let layers = match ethertype {
        0x0800 => {
            let header_len = usize::from(*rest.first()? & 0x0f) * 4;
            let header = rest.get(..20)?;
            let total = be16(header, 2);
            let whole = header[6] & 0x3f == 0 && header[7] == 0;
            let end = (l3 + total).min(frame.len());
            let pseudo = (whole && total >= header_len).then(|| {
                pseudo_v4(
                    &header[12..16].try_into().unwrap(),
                    &header[16..20].try_into().unwrap(),
                    header[9],
                    (total - header_len) as u16,
                )
            });
            Layers {
                l4: l3 + header_len,
                proto: header[9],
                src: mapped(&header[12..16]),
                pseudo,
                end,
            }
        }
        0x86dd => {
            let header = rest.get(..40)?;
            let end = (l3 + 40 + be16(header, 4)).min(frame.len());
            let mut next = header[6];
            let mut l4 = l3 + 40;
            let mut whole = true;
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 | 135 | 139 | 140 => {
                        next = *frame.get(l4)?;
                        l4 += (usize::from(*frame.get(l4 + 1)?) + 1) * 8;
                    }
                    44 => {
                        whole = false;
                        next = *frame.get(l4)?;
                        l4 += 8;
                    }
                    51 => {
                        whole = false;
                        next = *frame.get(l4)?;
                        l4 += (usize::from(*frame.get(l4 + 1)?) + 2) * 4;
                    }
                    _ => break,
                }
            }
            let pseudo = (whole && end >= l4).then(|| {
                pseudo_v6(
                    &header[8..24].try_into().unwrap(),
                    &header[24..40].try_into().unwrap(),
                    next,
                    (end - l4) as u32,
                )
            });
            Layers {
                l4,
                proto: next,
                src: header[8..24].try_into().ok()?,
                pseudo,
                end,
            }
        }
        _ => return None,
    };
    let header_len = if layers.proto == TCP { 20 } else { 8 };
    (frame.len() >= layers.l4 + header_len).then_some(layers)
}
