//! What the XDP program reports on the `EVENTS` ring buffer: the `Event`
//! record, its kinds and reset causes, and the loader's safe decode of a
//! record's bytes. Plain Rust, host-tested.

use crate::Addr;

/// `Event::kind` values.
pub mod event_kind {
    /// A step was accepted; `step` is its 1-based number.
    pub const PROGRESS: u8 = 1;
    /// Progress was thrown away; `detail` is a `reset_cause`.
    pub const RESET: u8 = 2;
    /// The last step was accepted; `expires_ns` says until when.
    pub const GRANT: u8 = 3;
    /// A packet to a protected port was dropped (rate limited).
    pub const DENIED: u8 = 4;
    /// A source failed too often; `expires_ns` says until when its knocks
    /// are ignored.
    pub const PENALIZED: u8 = 5;
}

/// `Event::detail` values for `event_kind::RESET`.
pub mod reset_cause {
    /// Another TCP SYN or UDP datagram arrived mid-sequence.
    pub const WRONG_PACKET: u8 = 1;
    /// The sequence was not completed within the rule's timeout.
    pub const TIMEOUT: u8 = 2;
    /// The sequence opens once, and it already has.
    pub const SPENT: u8 = 3;
}

/// One record on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub addr: Addr,
    /// Kernel monotonic clock (ns); for grants, when they expire.
    pub expires_ns: u64,
    pub kind: u8,
    pub detail: u8,
    /// The packet's protocol and destination port (host byte order).
    pub proto: u8,
    /// 1-based step number for progress events.
    pub step: u8,
    pub port: u16,
    /// Rule index, or `u16::MAX` when not about one rule.
    pub rule: u16,
}
const _: () = assert!(core::mem::size_of::<Event>() == 32);

impl Event {
    /// The event in one `EVENTS` record, read field by field from the bytes
    /// the XDP program wrote (its `repr(C)` layout, native byte order), so
    /// any alignment will do; `None` when `bytes` is not exactly the size of
    /// an `Event`.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        use core::mem::offset_of;

        /// The `N` bytes at `at`.
        fn field<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
            bytes.get(at..at + N)?.try_into().ok()
        }

        if bytes.len() != core::mem::size_of::<Event>() {
            return None;
        }
        Some(Event {
            addr: field(bytes, offset_of!(Event, addr))?,
            expires_ns: u64::from_ne_bytes(field(bytes, offset_of!(Event, expires_ns))?),
            kind: u8::from_ne_bytes(field(bytes, offset_of!(Event, kind))?),
            detail: u8::from_ne_bytes(field(bytes, offset_of!(Event, detail))?),
            proto: u8::from_ne_bytes(field(bytes, offset_of!(Event, proto))?),
            step: u8::from_ne_bytes(field(bytes, offset_of!(Event, step))?),
            port: u16::from_ne_bytes(field(bytes, offset_of!(Event, port))?),
            rule: u16::from_ne_bytes(field(bytes, offset_of!(Event, rule))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IPPROTO_UDP, ipv4_mapped};

    fn event() -> Event {
        Event {
            addr: ipv4_mapped([198, 18, 0, 2]),
            expires_ns: 0x0102_0304_0506_0708,
            kind: event_kind::RESET,
            detail: reset_cause::TIMEOUT,
            proto: IPPROTO_UDP,
            step: 3,
            port: 4728,
            rule: 0x0a0b,
        }
    }

    /// The bytes of `event` in memory: what the XDP program writes to the ring.
    fn memory(event: &Event) -> [u8; 32] {
        // SAFETY: `Event` is `repr(C)` without padding (its size is the sum
        // of its fields', asserted above), so all its 32 bytes are
        // initialized; the slice lives no longer than the borrow.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (event as *const Event).cast::<u8>(),
                core::mem::size_of::<Event>(),
            )
        };
        bytes.try_into().expect("32 bytes")
    }

    #[test]
    fn an_event_round_trips_through_its_bytes() {
        let event = event();
        assert_eq!(Event::decode(&memory(&event)), Some(event));
        assert_eq!(
            Event::decode(&memory(&Event::default())),
            Some(Event::default())
        );
    }

    #[test]
    fn decode_reads_the_documented_layout_at_any_alignment() {
        let mut record = Vec::new();
        record.extend_from_slice(&ipv4_mapped([198, 18, 0, 2]));
        record.extend_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
        record.extend_from_slice(&[event_kind::RESET, reset_cause::TIMEOUT, IPPROTO_UDP, 3]);
        record.extend_from_slice(&4728u16.to_ne_bytes());
        record.extend_from_slice(&0x0a0bu16.to_ne_bytes());
        assert_eq!(record, memory(&event()));
        for offset in 0..8 {
            let mut shifted = vec![0xee; offset];
            shifted.extend_from_slice(&record);
            assert_eq!(Event::decode(&shifted[offset..]), Some(event()));
        }
    }

    #[test]
    fn decode_refuses_records_of_another_size() {
        let bytes = memory(&event());
        assert_eq!(Event::decode(&bytes[..31]), None);
        assert_eq!(Event::decode(&[]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Event::decode(&longer), None);
    }
}
