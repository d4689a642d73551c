//! The layout the loader and the programs agree on: the programs' names
//! (the maps' are in knock-user's map table, checked against the object),
//! what a pinned filter records about itself (`Instance`), and the version
//! of it all. The `layout_fingerprint` test pins the sizes of every type a
//! pinned map holds.

use crate::MAX_RULES;

/// Name of the XDP program in the BPF object.
pub const PROGRAM_NAME: &str = "xknock";
/// The program that steers stopped packets to the host's closed port 0
/// (`steer`); the filter tail-calls it through slot 0 of the `CONCEAL`
/// program array.
pub const CONCEAL_PROGRAM_NAME: &str = "xknock_conceal";
/// The TC egress program that gives the host's answers to steered packets
/// back their ports; attached beside the filter on every interface.
pub const RESTORE_PROGRAM_NAME: &str = "xknock_restore";
/// The program that runs possible knock steps (echo requests too) through
/// the rules; the filter tail-calls it through slot 0 of the `KNOCK`
/// program array.
pub const KNOCK_PROGRAM_NAME: &str = "xknock_knock";

/// `BPF_NOEXIST`, a flag of a map update: insert only when the key is absent.
pub const BPF_NOEXIST: u64 = 1;

/// Version of the pinned layout: the maps under a `pin_dir`, their keys,
/// values and sizes. Bump it with any change to a pinned map's type, so a
/// new loader never reinterprets maps an older one left behind (the
/// `layout_fingerprint` test fails until it is bumped).
pub const LAYOUT_VERSION: u32 = 9;

/// Bytes of a rule's name kept in `Instance`.
pub const RULE_NAME_BYTES: usize = 31;

/// A rule's name as the pinned `INSTANCE` keeps it; empty: a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleName {
    pub len: u8,
    pub bytes: [u8; RULE_NAME_BYTES],
}
const _: () = assert!(size_of::<RuleName>() == 32);

impl RuleName {
    /// `None` when `name` is longer than `RULE_NAME_BYTES`.
    pub fn new(name: &str) -> Option<RuleName> {
        let mut bytes = [0; RULE_NAME_BYTES];
        bytes
            .get_mut(..name.len())?
            .copy_from_slice(name.as_bytes());
        Some(RuleName {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name, or `None` for a free slot (or bytes that are not one).
    pub fn get(&self) -> Option<&str> {
        let bytes = self.bytes.get(..usize::from(self.len))?;
        core::str::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    }
}

/// Index 0 of the pinned `INSTANCE` array: what every loader of one
/// `pin_dir` shares and the XDP program never reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    /// `LAYOUT_VERSION` of the loader that created the maps; zero: fresh.
    pub layout: u32,
    /// `Settings::source_seed`, drawn once: horizons stay where they are
    /// across loads.
    pub source_seed: u32,
    /// Counts the configurations loaded; names their pin directory.
    pub generation: u64,
    /// Which rule owns each rule index. A rule keeps its index across
    /// reloads, so its grants, flows and progress (keyed by index) stay its
    /// own.
    pub rules: [RuleName; MAX_RULES],
}
const _: () = assert!(size_of::<Instance>() == 16 + 32 * MAX_RULES);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers and byte
    // arrays with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for crate::Knock {}
    unsafe impl aya::Pod for crate::Settings {}
    unsafe impl aya::Pod for crate::SourceHorizon {}
    unsafe impl aya::Pod for crate::RuleConfig {}
    unsafe impl aya::Pod for crate::PortRoles {}
    unsafe impl aya::Pod for crate::SourceRule {}
    unsafe impl aya::Pod for crate::Progress {}
    unsafe impl aya::Pod for crate::Grant {}
    unsafe impl aya::Pod for crate::FlowKey {}
    unsafe impl aya::Pod for crate::Flow {}
    unsafe impl aya::Pod for crate::Penalty {}
    unsafe impl aya::Pod for crate::Event {}
    unsafe impl aya::Pod for crate::Instance {}
    unsafe impl aya::Pod for crate::SpentKey {}
    unsafe impl aya::Pod for crate::GrantKey {}
    unsafe impl aya::Pod for crate::SteeredSlot {}
    unsafe impl aya::Pod for crate::FirstStepBucket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    /// The sizes of everything pinned, recorded with the layout version
    /// they belong to: a change here without a new `LAYOUT_VERSION` would
    /// have a new loader misread an older loader's maps.
    #[test]
    fn layout_fingerprint() {
        let sizes = [
            size_of::<SourceRule>(),
            size_of::<Progress>(),
            size_of::<Grant>(),
            size_of::<FlowKey>(),
            size_of::<Flow>(),
            size_of::<Penalty>(),
            size_of::<SourceHorizon>(),
            size_of::<EventBudget>(),
            size_of::<Event>(),
            size_of::<Instance>(),
            size_of::<SteeredSlot>(),
            STEERED_SLOTS as usize,
            Reason::COUNT as usize,
            Answer::COUNT as usize,
            MAX_RULES,
            SOURCE_HORIZON_SLOTS as usize,
            size_of::<SpentKey>(),
            SPENT_ENTRIES as usize,
            size_of::<SpaDatagram>(),
            SPA_RING_BYTES as usize,
            REPLAY_ENTRIES as usize,
            size_of::<FirstStepBucket>(),
            FIRST_STEP_WAYS,
            FIRST_STEP_UNIT_SHIFT as usize,
            // GRANTS' key: the layout of `SourceRule`, the host bits of a
            // scope above the rule's index (none for the address alone).
            size_of::<GrantKey>(),
            GRANT_HOST_BITS_SHIFT as usize,
        ];
        assert_eq!(
            (LAYOUT_VERSION, sizes),
            (
                9,
                [
                    20,
                    16,
                    16,
                    24,
                    16,
                    24,
                    16,
                    16,
                    32,
                    528,
                    36,
                    65536,
                    22,
                    5,
                    16,
                    65536,
                    8,
                    4096,
                    1524,
                    1 << 20,
                    65536,
                    64,
                    8,
                    20,
                    20,
                    8
                ]
            ),
            "a pinned type changed: bump LAYOUT_VERSION and record the new sizes"
        );
    }

    #[test]
    fn rule_names_fit_or_are_refused() {
        let name = RuleName::new("ssh").expect("fits");
        assert_eq!(name.get(), Some("ssh"));
        assert_eq!(RuleName::default().get(), None);
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES)).is_some());
        assert!(RuleName::new(&"x".repeat(RULE_NAME_BYTES + 1)).is_none());
    }
}
