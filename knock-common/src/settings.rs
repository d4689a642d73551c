//! The global settings the loader writes and every program reads.

/// Global settings: index 0 of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// How many entries of `RULES` are in use.
    pub rules: u32,
    /// Events a flood can cause (denied attempts, first steps) each CPU may
    /// emit per second.
    pub flood_events_per_sec: u32,
    /// Entries in the `ALLOW` / `DENY` tries; zero skips the lookup.
    pub allow_entries: u32,
    pub deny_entries: u32,
    /// An admitted TCP flow is forgotten after this long without a packet.
    pub tcp_idle_ns: u64,
    /// An admitted TCP flow that has seen a FIN is forgotten after this long.
    pub tcp_closing_ns: u64,
    /// An admitted UDP flow is forgotten after this long without a packet.
    pub udp_idle_ns: u64,
    /// Failed attempts (progress resets) within `penalty_window_ns` that get
    /// a source's knocks ignored for `penalty_ns`; zero disables the penalty.
    pub penalty_failures: u32,
    /// `SourceHorizon::knocking_until` is raised this many horizon units
    /// past now: it covers the longest sequence timeout.
    pub knocking_horizon: u32,
    pub penalty_window_ns: u64,
    pub penalty_ns: u64,
    /// `SourceHorizon::admitted_until` is raised this many horizon units
    /// past now: it covers the longest grant and flow idle time.
    pub admitted_horizon: u32,
    /// Seeds the hash that picks a source's `SOURCE_HORIZONS` slot, so
    /// nobody can aim spoofed sources at a known client's slot.
    pub source_seed: u32,
    /// `CONCEAL_CLOSED` or `CONCEAL_DROP`.
    pub conceal: u32,
    /// SPA datagrams each CPU may hand to the loader per second; the rest
    /// are shed (counted, never passed).
    pub spa_datagrams_per_sec: u32,
    /// `ipv4_slot_prefix(source_seed)`, so that an IPv4 source's slot costs
    /// the filter one round of the hash (`ipv4_source_slot`).
    pub ipv4_slot_prefix: u32,
    /// `SourceHorizon::failing_until` is raised this many horizon units
    /// past now: it covers the penalty window and the penalty.
    pub failing_horizon: u32,
    /// `FIRST_STEPS` has 2^this many buckets (`first_step_bucket_bits`).
    pub first_step_bucket_bits: u32,
    /// Rules whose grants admit a prefix wider than the address (bit `r`:
    /// rule `r`): a protected port of such a rule looks for a grant of the
    /// source's prefix, and its horizon, too.
    pub scoped_rules: u32,
}
const _: () = assert!(size_of::<Settings>() == 96);

/// `Settings::conceal`: the host's stack answers, as at a closed port.
pub const CONCEAL_CLOSED: u32 = 0;
/// `Settings::conceal`: stay silent.
pub const CONCEAL_DROP: u32 = 1;
