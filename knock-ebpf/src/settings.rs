//! What the loader configures: the global settings, the rules, and the role
//! of every port; and the kernel clock every timeout reads.

use aya_ebpf::{helpers::generated::bpf_ktime_get_coarse_ns, macros::map, maps::Array};
use knock_common::{
    Instance, MAX_RULES, PORT_ROLES_ENTRIES, PortRoles, RuleConfig, Settings, port_roles_index,
};

// Sizes here are defaults; the loader sets the configured ones before loading.
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static RULES: Array<RuleConfig> = Array::with_max_entries(MAX_RULES as u32, 0);
#[map]
static PORT_ROLES: Array<PortRoles> = Array::with_max_entries(PORT_ROLES_ENTRIES, 0);
/// What the loaders of one pin directory share (the seed, which rule owns
/// which index); never read here.
#[map]
static INSTANCE: Array<Instance> = Array::with_max_entries(1, 0);

/// The global settings; only missing before the loader wrote them.
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// Rule `index`, if it is in range.
#[inline(always)]
pub fn rule(index: u32) -> Option<&'static RuleConfig> {
    RULES.get(index)
}

/// Which rules knock at, protect, or listen for SPA on a protocol's port
/// (an echo request's size for `IPPROTO_ICMP`); none for anything else.
#[inline(always)]
pub fn roles_of(proto: u8, port: u16) -> PortRoles {
    port_roles_index(proto, port)
        .and_then(|index| PORT_ROLES.get(index))
        .copied()
        .unwrap_or_default()
}

/// The kernel's monotonic clock. The coarse variant (jiffy resolution) is
/// plenty for second-scale timeouts and costs about half of bpf_ktime_get_ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, allowed for XDP programs.
    unsafe { bpf_ktime_get_coarse_ns() }
}
