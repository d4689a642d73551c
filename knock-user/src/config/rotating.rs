//! Rotating sequences: a rule's sequence derived from a shared secret and
//! the time window, as TOTP (RFC 6238) derives its codes, so a sniffed
//! knock is worth nothing once its window has passed.
//!
//! The construction, for a client written without xknock:
//!
//! - `window = floor(unix_time_ms / rotate_ms)`;
//! - a stream of 32-bit big-endian words, the concatenation of
//!   `HMAC-SHA256(secret, window as 8 bytes big-endian || block as 1 byte)`
//!   for `block = 0, 1, 2, ...`;
//! - each word `w` is a candidate step: UDP when `w & 1`, else TCP, on port
//!   `low + (w >> 1) % (high - low + 1)` of the rule's `port_range`;
//! - a candidate already in the sequence, or one the configuration protects
//!   (any rule's `protect`), is skipped; the first `steps` candidates left
//!   are the sequence.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use knock_common::Knock;
use serde::{Deserialize, Deserializer, de};
use sha2::{Digest as _, Sha256};

use super::values::PortSpec;

/// Shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;
/// What `xknock keygen` draws: 256 bits.
pub const KEYGEN_BYTES: usize = 32;
/// The range a rotating rule draws its steps from unless it says otherwise:
/// above the privileged ports, below Linux's default ephemeral range
/// (32768-60999), whose ports this host's own connections use.
pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
    low: 1024,
    high: 32767,
};
/// Steps of a rotating sequence unless `steps` says otherwise.
pub const DEFAULT_STEPS: usize = 4;
/// How often a rotating sequence changes unless `rotate` says otherwise
/// (TOTP's period).
pub const DEFAULT_ROTATE: Duration = Duration::from_secs(30);
/// Shortest `rotate` accepted.
pub const MIN_ROTATE: Duration = Duration::from_secs(2);
/// Fewest (protocol, port) pairs a range must leave to draw from.
const MIN_CHOICES: usize = 64;
/// HMAC blocks tried before giving up (8 candidates each).
const MAX_BLOCKS: u8 = 64;

/// A rotating rule's secret, its schedule and where its steps come from.
#[derive(Clone, PartialEq, Eq)]
pub struct Rotating {
    /// The secret file the key came from.
    pub path: PathBuf,
    key: Vec<u8>,
    pub rotate: Duration,
    pub steps: usize,
    pub range: PortRange,
    /// Steps never drawn: every port the configuration protects.
    pub reserved: Vec<PortSpec>,
}

impl fmt::Debug for Rotating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Rotating")
            .field("path", &self.path)
            .field("rotate", &self.rotate)
            .field("steps", &self.steps)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// An inclusive port range, written `LOW-HIGH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    fn ports(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.low <= other.high && other.low <= self.high
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a port range such as 1024-32767");
        let (low, high) = s.split_once('-').ok_or_else(bad)?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
        let (low, high) = (port(low).ok_or_else(bad)?, port(high).ok_or_else(bad)?);
        if low > high {
            return Err(format!("`{s}` ends before it starts"));
        }
        Ok(PortRange { low, high })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A secret file's content: base64 (what `xknock keygen` writes) of at
/// least `MIN_SECRET_BYTES` bytes.
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let key = engine
        .decode(text.trim())
        .map_err(|e| format!("not a base64 secret such as `xknock keygen` writes ({e})"))?;
    if key.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{} bytes is too short a secret; use at least {MIN_SECRET_BYTES} (`xknock keygen` makes {KEYGEN_BYTES})",
            key.len()
        ));
    }
    Ok(key)
}

/// A new secret, as a line for a secret file.
pub fn keygen() -> Result<String, getrandom::Error> {
    let mut key = [0u8; KEYGEN_BYTES];
    getrandom::fill(&mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

/// A warning for the secret file at `path` if its permission bits `mode`
/// let others read it.
pub fn readable_by_others(path: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} can be read by other users (mode {:o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        )
    })
}

impl Rotating {
    /// The rule's keys, checked but for `rotate`, which the configuration
    /// checks against `MIN_ROTATE`.
    pub fn new(
        path: PathBuf,
        key: Vec<u8>,
        rotate: Duration,
        steps: usize,
        range: PortRange,
        reserved: Vec<PortSpec>,
    ) -> Result<Rotating, String> {
        let choices = 2 * range.ports() as usize
            - reserved
                .iter()
                .filter(|s| !s.is_icmp() && range.contains(s.0.port))
                .count();
        if choices < MIN_CHOICES.max(4 * steps) {
            return Err(format!(
                "port_range {range} leaves {choices} (protocol, port) choices once protected ports are set aside; widen it"
            ));
        }
        Ok(Rotating {
            path,
            key,
            rotate,
            steps,
            range,
            reserved,
        })
    }

    /// Names the secret without giving it away: the first 8 bytes of
    /// SHA-256 over a label and the key, in hex.
    pub fn key_id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"xknock key id\0")
            .chain_update(&self.key)
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether two rules share a secret (and so would share sequences).
    pub fn same_key(&self, other: &Rotating) -> bool {
        self.key == other.key
    }

    /// The window `at` falls in.
    pub fn window(&self, at: SystemTime) -> u64 {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        (ms / self.rotate.as_millis()) as u64
    }

    /// When window `window` begins.
    pub fn window_start(&self, window: u64) -> SystemTime {
        let ms = u128::from(window) * self.rotate.as_millis();
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The sequence of window `window`.
    pub fn sequence(&self, window: u64) -> Result<Vec<PortSpec>, String> {
        let mut sequence: Vec<PortSpec> = Vec::with_capacity(self.steps);
        for block in 0..MAX_BLOCKS {
            #[expect(clippy::expect_used, reason = "HMAC takes keys of any length")]
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
            mac.update(&window.to_be_bytes());
            mac.update(&[block]);
            let bytes = mac.finalize().into_bytes();
            for word in bytes.as_chunks::<4>().0 {
                let word = u32::from_be_bytes(*word);
                let port = self.range.low + ((word >> 1) % self.range.ports()) as u16;
                let step = PortSpec(if word & 1 == 1 {
                    Knock::udp(port)
                } else {
                    Knock::tcp(port)
                });
                if !sequence.contains(&step) && !self.reserved.contains(&step) {
                    sequence.push(step);
                    if sequence.len() == self.steps {
                        return Ok(sequence);
                    }
                }
            }
        }
        Err(format!(
            "no {}-step sequence in port_range {} for window {window}",
            self.steps, self.range
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotating(key: &[u8], rotate: Duration, steps: usize, reserved: Vec<PortSpec>) -> Rotating {
        Rotating::new(
            PathBuf::from("k"),
            key.to_vec(),
            rotate,
            steps,
            DEFAULT_PORT_RANGE,
            reserved,
        )
        .expect("valid")
    }

    #[test]
    fn the_sequence_follows_the_documented_construction() {
        // Computed independently, in Python:
        //   d = hmac.new(b"0123456789abcdef", (1234).to_bytes(8, "big") + b"\0",
        //                hashlib.sha256).digest()
        //   w = int.from_bytes(d[i:i+4], "big"): ("udp" if w & 1 else "tcp"),
        //   1024 + (w >> 1) % 31744
        let r = rotating(b"0123456789abcdef", Duration::from_secs(30), 4, vec![]);
        let expected: Vec<PortSpec> = ["tcp:10320", "udp:29028", "udp:14219", "tcp:14061"]
            .iter()
            .map(|s| s.parse().expect("step"))
            .collect();
        assert_eq!(r.sequence(1234).expect("derives"), expected);
    }

    #[test]
    fn windows_follow_the_wall_clock() {
        let r = rotating(&[7; 16], Duration::from_secs(30), 4, vec![]);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(r.window(at(59)), 1);
        assert_eq!(r.window(at(60)), 2);
        assert_eq!(r.window_start(2), at(60));
        // Any duration, not only divisors of a minute.
        let odd = rotating(&[7; 16], Duration::from_millis(2500), 4, vec![]);
        assert_eq!(odd.window(at(5)), 2);
        assert_eq!(odd.window(at(4)), 1);
    }

    #[test]
    fn sequences_differ_by_window_and_secret_and_skip_reserved_ports() {
        let r = rotating(&[1; 16], Duration::from_secs(30), 6, vec![]);
        let a = r.sequence(100).expect("derives");
        assert_eq!(a.len(), 6);
        assert_ne!(a, r.sequence(101).expect("derives"));
        let other = rotating(&[2; 16], Duration::from_secs(30), 6, vec![]);
        assert_ne!(a, other.sequence(100).expect("derives"));
        let has_both = a.iter().any(|s| s.0.proto == knock_common::IPPROTO_UDP)
            && a.iter().any(|s| s.0.proto == knock_common::IPPROTO_TCP);
        let mixed = (100..110).any(|w| {
            let s = r.sequence(w).expect("derives");
            s.iter().any(|s| s.0.proto == knock_common::IPPROTO_UDP)
                && s.iter().any(|s| s.0.proto == knock_common::IPPROTO_TCP)
        });
        assert!(has_both || mixed, "both protocols are drawn");
        // Reserving the first step moves every later one up.
        let reserved = rotating(&[1; 16], Duration::from_secs(30), 6, vec![a[0]]);
        let b = reserved.sequence(100).expect("derives");
        assert!(!b.contains(&a[0]));
        assert_eq!(b[..5], a[1..]);
        for s in &a {
            assert!(DEFAULT_PORT_RANGE.contains(s.0.port) && !s.is_icmp());
        }
    }

    #[test]
    fn secrets_are_base64_of_enough_bytes() {
        let line = keygen().expect("random");
        assert_eq!(parse_secret(&format!("{line}\n")).expect("valid").len(), 32);
        assert_ne!(line, keygen().expect("random"));
        assert!(
            parse_secret("c2hvcnQ=")
                .expect_err("8 bytes")
                .contains("too short")
        );
        assert!(parse_secret("not base64!").is_err());
        assert!(
            format!(
                "{:?}",
                rotating(b"0123456789abcdef", Duration::from_secs(1), 4, vec![])
            )
            .find("0123")
            .is_none(),
            "Debug never shows the key"
        );
    }

    #[test]
    fn ranges_parse_and_must_leave_choices() {
        assert_eq!(
            "2000-3000".parse::<PortRange>(),
            Ok(PortRange {
                low: 2000,
                high: 3000
            })
        );
        assert!("3000-2000".parse::<PortRange>().is_err());
        assert!("0-100".parse::<PortRange>().is_err());
        let narrow = PortRange {
            low: 2000,
            high: 2010,
        };
        assert!(
            Rotating::new(
                "k".into(),
                vec![0; 16],
                Duration::from_secs(30),
                4,
                narrow,
                vec![]
            )
            .is_err()
        );
    }
}
