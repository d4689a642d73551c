//! Types shared by the XDP program and the `xknock` loader, and the knock
//! state machine both of them (and the host unit tests) run.
//!
//! Every map type is `#[repr(C)]` with explicit padding so the kernel and
//! userspace agree byte for byte; the `const _` assertions pin the sizes.
//!
//! One module per concern of the kernel, each re-exported here so that
//! `knock_common::X` names every item:
//! - `packet`: protocol numbers, header sizes and flags, the parser's limits;
//! - `settings`: the global settings every program reads;
//! - `knocking`: knock steps, rules, a source's progress, spent sequences;
//!   `first_step` keeps sources one step in, the table a flood churns;
//!   `machine` runs a packet through them;
//! - `guard`: port roles, grants and admitted flows;
//! - `spa`: datagrams handed to the loader for SPA;
//! - `verdict`: the counted reasons and concealment answers;
//! - `event`: the `EVENTS` ring's record, its kinds and reset causes;
//! - `steer`: how a stopped packet is steered to the host's closed port 0
//!   and its answer given back its ports;
//! - `addr`, `horizon`, `penalty`, `budget`, `checksum`: addresses,
//!   per-source horizons, penalties, event budgets, checksums;
//! - `layout`: program names, the pinned `Instance` and
//!   `LAYOUT_VERSION`, above all the others.
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod machine;

mod addr;
mod budget;
mod event;
mod first_step;
mod guard;
mod horizon;
mod knocking;
mod layout;
mod packet;
mod penalty;
mod scope;
mod settings;
mod spa;
mod steer;
mod verdict;

pub use addr::{Addr, AddrWords, addr_words, ipv4_mapped, words_addr};
pub use budget::{BUDGET_CLOCK_INTERVAL, EventBudget};
pub use event::{Event, EventKind, NOT_A_RULE, ResetCause};
pub use first_step::{
    FIRST_STEP_UNIT_SHIFT, FIRST_STEP_WAYS, FirstStepBucket, FirstStepKey,
    MAX_FIRST_STEP_TIMEOUT_NS, MIN_FIRST_STEP_RECORDS, age_units, displaced,
    first_step_bucket_bits, first_step_buckets, record_aged, record_progress, record_rule, way_of,
};
pub use guard::{Flow, FlowKey, Grant, PORT_ROLES_ENTRIES, PortRoles, port_roles_index};
pub use horizon::{
    HORIZON_UNIT_SHIFT, SOURCE_HORIZON_SLOTS, SourceHorizon, horizon_span, horizon_units,
    ipv4_slot_prefix, ipv4_source_hash, ipv4_source_slot, source_hash, source_slot,
};
pub use knocking::{
    Knock, MAX_RULES, MAX_STEPS, ONCE, ONCE_HELD, Progress, RuleConfig, SPENT_ENTRIES, SourceRule,
    SpentKey, sequence_tag,
};
pub use layout::{
    BPF_NOEXIST, CONCEAL_PROGRAM_NAME, Instance, KNOCK_PROGRAM_NAME, LAYOUT_VERSION, PROGRAM_NAME,
    RESTORE_PROGRAM_NAME, RULE_NAME_BYTES, RuleName,
};
pub use packet::*;
pub use penalty::{Penalty, record_failure};
pub use scope::{
    GRANT_HOST_BITS_SHIFT, GrantKey, MAX_IPV4_HOST_BITS, MAX_IPV6_HOST_BITS, host_mask,
    is_ipv4_mapped, prefix_words,
};
pub use settings::{CONCEAL_CLOSED, CONCEAL_DROP, Settings};
pub use spa::{
    REPLAY_ENTRIES, SPA_DATAGRAM_HEADER, SPA_MAX_BYTES, SPA_MIN_BYTES, SPA_RING_BYTES, SpaDatagram,
};
pub use steer::{
    ECHO_ANY, ECHO_EXACT, FLOW_LABEL_MASK, STEER_TO_PORT, STEERED_SLOTS, SteerKey, Steered,
    SteeredSlot, datagram_echo, quotes_a_packet, replace_udp_words, replace_words, rst_echo,
    segment_echo, steered_label, steered_port, steered_slot,
};
pub use verdict::{Answer, Reason};
