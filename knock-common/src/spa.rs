//! Single packet authorization as the kernel sees it: which datagrams to an
//! SPA port it hands to the loader, and how, and what the loader keeps
//! pinned beside the filter to refuse replays.

use crate::Addr;

/// The smallest and largest SPA payload fwknop sends (its
/// `MIN_SPA_DATA_SIZE` and `MAX_SPA_PACKET_LEN`); other sizes at an SPA
/// port are not handed to the loader.
pub const SPA_MIN_BYTES: usize = 140;
pub const SPA_MAX_BYTES: usize = 1500;

/// Bytes of the ring that hands SPA datagrams to the loader (about 680 of
/// them at once).
pub const SPA_RING_BYTES: u32 = 1 << 20;

/// Entries of the pinned `REPLAY` map: digests of the SPA packets accepted
/// within their `max_age`. The kernel never touches it; it is pinned with
/// the filter so a restarted loader still refuses what it accepted.
pub const REPLAY_ENTRIES: u32 = 65536;

/// One datagram to an SPA port, as the filter hands it to the loader.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SpaDatagram {
    /// The source address in the one key form.
    pub src: Addr,
    /// Network byte order: the port it was sent to.
    pub dst_port: [u8; 2],
    /// Bytes of `payload` in use (`SPA_MIN_BYTES..=SPA_MAX_BYTES`).
    pub len: u16,
    /// The interface it arrived on.
    pub ifindex: u32,
    pub payload: [u8; SPA_MAX_BYTES],
}
const _: () = assert!(size_of::<SpaDatagram>() == 1524);

/// Byte offsets of `SpaDatagram`'s fields, for the loader's safe decode.
pub const SPA_DATAGRAM_HEADER: usize = 24;

impl SpaDatagram {
    /// The source, destination port and payload of a record from the
    /// ring; `None` when it is shorter than its header says.
    pub fn decode(record: &[u8]) -> Option<(Addr, u16, &[u8])> {
        let src: Addr = record.get(..16)?.try_into().ok()?;
        let port = u16::from_be_bytes(record.get(16..18)?.try_into().ok()?);
        let len = u16::from_ne_bytes(record.get(18..20)?.try_into().ok()?) as usize;
        if len > SPA_MAX_BYTES {
            return None;
        }
        let payload = record.get(SPA_DATAGRAM_HEADER..SPA_DATAGRAM_HEADER + len)?;
        Some((src, port, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4_mapped;

    fn record(len: u16, total: usize) -> [u8; 1524] {
        let mut bytes = [0u8; 1524];
        bytes[..16].copy_from_slice(&ipv4_mapped([192, 0, 2, 7]));
        bytes[16..18].copy_from_slice(&62201u16.to_be_bytes());
        bytes[18..20].copy_from_slice(&len.to_ne_bytes());
        for (i, b) in bytes[SPA_DATAGRAM_HEADER..total].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    #[test]
    fn decode_reads_the_header_and_only_the_payload_in_use() {
        let bytes = record(200, 1524);
        let (src, port, payload) = SpaDatagram::decode(&bytes).expect("decodes");
        assert_eq!(src, ipv4_mapped([192, 0, 2, 7]));
        assert_eq!(port, 62201);
        assert_eq!(payload.len(), 200);
        assert_eq!(payload[199], 199);
    }

    #[test]
    fn decode_refuses_lengths_beyond_the_record() {
        let bytes = record(1501, 1524);
        assert!(SpaDatagram::decode(&bytes).is_none());
        let short = record(200, 1524);
        assert!(SpaDatagram::decode(&short[..SPA_DATAGRAM_HEADER + 199]).is_none());
        assert!(SpaDatagram::decode(&short[..10]).is_none());
    }
}
