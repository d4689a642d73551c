//! What the XDP program reports on the `EVENTS` ring buffer: the `Event`
//! record, its kinds and reset causes, and the loader's safe decode of a
//! record's bytes. Plain Rust, host-tested.

use crate::{Addr, Knock};

/// A byte of the ring's record as an enum: the variants with their bytes,
/// `decode` (the variant of a byte, if any) and `TryFrom<u8>` (the byte
/// that is none as the error). Each byte is written once, beside its
/// variant.
macro_rules! byte_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $byte:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant = $byte,
            )+
        }

        impl $name {
            /// The variant whose byte is `code`, if there is one.
            pub const fn decode(code: u8) -> Option<$name> {
                match code {
                    $($byte => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<u8> for $name {
            /// The byte that is no variant.
            type Error = u8;

            fn try_from(code: u8) -> Result<$name, u8> {
                $name::decode(code).ok_or(code)
            }
        }
    };
}

byte_enum! {
    /// What an `Event` reports: its `kind` byte on the ring.
    pub enum EventKind {
        /// A step was accepted; `step` is its 1-based number.
        Progress = 1,
        /// Progress was thrown away; `detail` is a `ResetCause`.
        Reset = 2,
        /// The last step was accepted; `expires_ns` says until when.
        Grant = 3,
        /// A packet to a protected port was dropped (rate limited).
        Denied = 4,
        /// A source failed too often; `expires_ns` says until when its knocks
        /// are ignored.
        Penalized = 5,
        /// The last step of a sequence the fleet spends (`ONCE_HELD`) was
        /// accepted and recorded as spent here, but nothing was granted: the
        /// loader grants (until `expires_ns`) once the fleet has recorded
        /// the spend.
        Held = 6,
    }
}

byte_enum! {
    /// Why progress was thrown away: the `detail` byte of an
    /// `EventKind::Reset` event.
    pub enum ResetCause {
        /// Another TCP SYN or UDP datagram arrived mid-sequence.
        WrongPacket = 1,
        /// The sequence was not completed within the rule's timeout.
        Timeout = 2,
        /// The sequence opens once, and it already has.
        Spent = 3,
    }
}

/// `Event::rule` of an event about no one rule.
pub const NOT_A_RULE: u16 = u16::MAX;

/// One record on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub addr: Addr,
    /// Kernel monotonic clock (ns); for grants, when they expire.
    pub expires_ns: u64,
    /// An `EventKind`; read it with `Event::kind()`.
    pub kind: u8,
    /// A `ResetCause` for a reset, zero otherwise; read it with
    /// `Event::reset_cause()`.
    pub detail: u8,
    /// The packet's protocol and destination port (host byte order).
    pub proto: u8,
    /// 1-based step number for progress events.
    pub step: u8,
    pub port: u16,
    /// Rule index, or `NOT_A_RULE`.
    pub rule: u16,
}
const _: () = assert!(size_of::<Event>() == 32);

impl Event {
    /// An event of `kind` about a packet `knock` from `addr` for rule index
    /// `rule`, the rest zero: what each kind's constructor starts from.
    #[inline(always)]
    const fn of(kind: EventKind, addr: &Addr, knock: Knock, rule: u32) -> Event {
        Event {
            addr: *addr,
            expires_ns: 0,
            kind: kind as u8,
            detail: 0,
            proto: knock.proto,
            step: 0,
            port: knock.port,
            rule: rule as u16,
        }
    }

    /// `knock` from `addr` was step `step` (1-based) of rule `rule`.
    #[inline(always)]
    pub const fn progress(addr: &Addr, knock: Knock, rule: u32, step: u8) -> Event {
        Event {
            step,
            ..Event::of(EventKind::Progress, addr, knock, rule)
        }
    }

    /// `knock` from `addr` threw away its progress through rule `rule`.
    #[inline(always)]
    pub const fn reset(addr: &Addr, knock: Knock, rule: u32, cause: ResetCause) -> Event {
        Event {
            detail: cause as u8,
            ..Event::of(EventKind::Reset, addr, knock, rule)
        }
    }

    /// `knock` from `addr`, the last of rule `rule`'s `steps` steps, opened
    /// it until `expires_ns`.
    #[inline(always)]
    pub const fn grant(addr: &Addr, knock: Knock, rule: u32, steps: u8, expires_ns: u64) -> Event {
        Event {
            step: steps,
            expires_ns,
            ..Event::of(EventKind::Grant, addr, knock, rule)
        }
    }

    /// `knock` from `addr`, the last of rule `rule`'s `steps` steps,
    /// completed a sequence the fleet spends: it would open until
    /// `expires_ns` once the loader grants it.
    #[inline(always)]
    pub const fn held(addr: &Addr, knock: Knock, rule: u32, steps: u8, expires_ns: u64) -> Event {
        Event {
            step: steps,
            expires_ns,
            ..Event::of(EventKind::Held, addr, knock, rule)
        }
    }

    /// `knock` from `addr` was stopped at a protected port.
    #[inline(always)]
    pub const fn denied(addr: &Addr, knock: Knock) -> Event {
        Event::of(EventKind::Denied, addr, knock, NOT_A_RULE as u32)
    }

    /// `knock` from `addr` was one failure too many: its knocks are ignored
    /// until `until_ns`.
    #[inline(always)]
    pub const fn penalized(addr: &Addr, knock: Knock, until_ns: u64) -> Event {
        Event {
            expires_ns: until_ns,
            ..Event::of(EventKind::Penalized, addr, knock, NOT_A_RULE as u32)
        }
    }

    /// What it reports; `Err` with the byte when that is no `EventKind`.
    pub const fn kind(&self) -> Result<EventKind, u8> {
        match EventKind::decode(self.kind) {
            Some(kind) => Ok(kind),
            None => Err(self.kind),
        }
    }

    /// Why progress was thrown away, for a reset with a known cause.
    pub const fn reset_cause(&self) -> Option<ResetCause> {
        match EventKind::decode(self.kind) {
            Some(EventKind::Reset) => ResetCause::decode(self.detail),
            _ => None,
        }
    }

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

        if bytes.len() != size_of::<Event>() {
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
            kind: EventKind::Reset as u8,
            detail: ResetCause::Timeout as u8,
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
            core::slice::from_raw_parts(core::ptr::from_ref(event).cast::<u8>(), size_of::<Event>())
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
        record.extend_from_slice(&[2, 2, IPPROTO_UDP, 3]);
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

    #[test]
    fn kinds_and_causes_keep_their_bytes_and_decode_safely() {
        let kinds = [
            (EventKind::Progress, 1),
            (EventKind::Reset, 2),
            (EventKind::Grant, 3),
            (EventKind::Denied, 4),
            (EventKind::Penalized, 5),
            (EventKind::Held, 6),
        ];
        for (kind, byte) in kinds {
            assert_eq!(kind as u8, byte);
            assert_eq!(EventKind::try_from(byte), Ok(kind));
        }
        for byte in [0, 7, 99, u8::MAX] {
            assert_eq!(EventKind::try_from(byte), Err(byte));
        }
        let causes = [
            (ResetCause::WrongPacket, 1),
            (ResetCause::Timeout, 2),
            (ResetCause::Spent, 3),
        ];
        for (cause, byte) in causes {
            assert_eq!(cause as u8, byte);
            assert_eq!(ResetCause::try_from(byte), Ok(cause));
        }
        for byte in [0, 4, u8::MAX] {
            assert_eq!(ResetCause::try_from(byte), Err(byte));
        }
    }

    #[test]
    fn constructors_fill_what_each_kind_reports() {
        let addr = ipv4_mapped([198, 18, 0, 2]);
        let knock = Knock::udp(4728);
        let reset = Event::reset(&addr, knock, 7, ResetCause::Spent);
        assert_eq!(
            reset,
            Event {
                addr,
                expires_ns: 0,
                kind: 2,
                detail: 3,
                proto: IPPROTO_UDP,
                step: 0,
                port: 4728,
                rule: 7,
            }
        );
        assert_eq!(reset.kind(), Ok(EventKind::Reset));
        assert_eq!(reset.reset_cause(), Some(ResetCause::Spent));

        let progress = Event::progress(&addr, knock, 1, 2);
        assert_eq!(
            (progress.kind(), progress.step),
            (Ok(EventKind::Progress), 2)
        );
        assert_eq!(progress.reset_cause(), None);

        let grant = Event::grant(&addr, knock, 1, 3, 99);
        assert_eq!(
            (grant.kind(), grant.step, grant.expires_ns, grant.detail),
            (Ok(EventKind::Grant), 3, 99, 0)
        );

        let denied = Event::denied(&addr, knock);
        assert_eq!(
            (denied.kind(), denied.rule),
            (Ok(EventKind::Denied), NOT_A_RULE)
        );

        let penalized = Event::penalized(&addr, knock, 42);
        assert_eq!(
            (penalized.kind(), penalized.rule, penalized.expires_ns),
            (Ok(EventKind::Penalized), NOT_A_RULE, 42)
        );

        let unknown = Event {
            kind: 99,
            detail: 2,
            ..reset
        };
        assert_eq!((unknown.kind(), unknown.reset_cause()), (Err(99), None));
    }
}
