//! What became of a packet, as counted per CPU: the filter's verdict by
//! reason (`COUNTERS`) and concealment's answer (`ANSWERS`).

/// Per-CPU counters: one slot per verdict reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 or IPv6.
    PassNotIp = 0,
    /// IP, but neither TCP nor UDP (ICMP, ESP, ...).
    PassOtherProtocol,
    /// A non-first fragment: it cannot be reassembled without its first fragment.
    PassLaterFragment,
    /// TCP/UDP to a port that no rule uses.
    PassUnprotected,
    /// To a protected port, from a source with a live grant.
    PassGranted,
    /// To a protected port, part of a flow admitted earlier.
    PassAdmittedFlow,
    /// To a protected port, from an address on the allowlist.
    PassAllowlisted,
    /// An ICMP echo request that was a knock step: it passes, and the host
    /// answers it as it answers every ping.
    PassEchoKnock,
    /// A knock step that advanced a sequence (dropped like every knock).
    DropKnockAdvanced,
    /// A knock step that completed a sequence and created a grant.
    DropKnockGranted,
    /// A retransmitted copy of the step just accepted.
    DropKnockDuplicate,
    /// To a knock port, but no step for this source (dropped: knock ports look filtered).
    DropKnockPort,
    /// To a protected port from a source without a grant or admitted flow.
    DropProtected,
    /// A knock or protected-port packet from an address on the denylist.
    DropDenied,
    /// A knock from a source serving a penalty for repeated failures.
    DropPenalized,
    /// A datagram to an SPA port, handed to the loader to verify.
    DropSpaCopied,
    /// A datagram to an SPA port over the per-CPU rate, or with the
    /// loader's ring full: not looked at.
    DropSpaShed,
    /// A datagram to an SPA port that cannot be an SPA packet: its size is
    /// outside what fwknop sends, or it is a fragment.
    DropSpaUnfit,
    /// Headers truncated or unparsable: fails closed.
    DropMalformed,
    /// More VLAN tags than `MAX_VLAN_DEPTH`.
    DropTooManyVlanTags,
    /// More IPv6 extension headers than `MAX_IPV6_EXT_HEADERS`.
    DropExtHeaderChainTooLong,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropExtHeaderChainTooLong as u32 + 1;
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassOtherProtocol,
        Reason::PassLaterFragment,
        Reason::PassUnprotected,
        Reason::PassGranted,
        Reason::PassAdmittedFlow,
        Reason::PassAllowlisted,
        Reason::PassEchoKnock,
        Reason::DropKnockAdvanced,
        Reason::DropKnockGranted,
        Reason::DropKnockDuplicate,
        Reason::DropKnockPort,
        Reason::DropProtected,
        Reason::DropDenied,
        Reason::DropPenalized,
        Reason::DropSpaCopied,
        Reason::DropSpaShed,
        Reason::DropSpaUnfit,
        Reason::DropMalformed,
        Reason::DropTooManyVlanTags,
        Reason::DropExtHeaderChainTooLong,
    ];

    /// The reason whose number is `code`, if there is one.
    pub fn decode(code: u32) -> Option<Reason> {
        Reason::ALL.get(code as usize).copied()
    }

    pub const fn passes(self) -> bool {
        (self as u32) <= Reason::PassEchoKnock as u32
    }

    /// Stopped at a knock port, a protected port or an SPA port: with
    /// `conceal = "closed"` the sender gets what a closed port would answer.
    pub const fn conceals(self) -> bool {
        (self as u32) >= Reason::DropKnockAdvanced as u32
            && (self as u32) <= Reason::DropSpaUnfit as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassOtherProtocol => "pass_other_protocol",
            Reason::PassLaterFragment => "pass_later_fragment",
            Reason::PassUnprotected => "pass_unprotected",
            Reason::PassGranted => "pass_granted",
            Reason::PassAdmittedFlow => "pass_admitted_flow",
            Reason::PassAllowlisted => "pass_allowlisted",
            Reason::PassEchoKnock => "pass_echo_knock",
            Reason::DropKnockAdvanced => "drop_knock_advanced",
            Reason::DropKnockGranted => "drop_knock_granted",
            Reason::DropKnockDuplicate => "drop_knock_duplicate",
            Reason::DropKnockPort => "drop_knock_port",
            Reason::DropProtected => "drop_protected",
            Reason::DropDenied => "drop_denied",
            Reason::DropPenalized => "drop_penalized",
            Reason::DropSpaCopied => "drop_spa_copied",
            Reason::DropSpaShed => "drop_spa_shed",
            Reason::DropSpaUnfit => "drop_spa_unfit",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropTooManyVlanTags => "drop_too_many_vlan_tags",
            Reason::DropExtHeaderChainTooLong => "drop_ext_header_chain_too_long",
        }
    }
}

/// Per-CPU counters of what concealment did with a packet it stopped
/// (`ANSWERS`, one slot each; none move with `conceal = "drop"`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A TCP RST sent back, as to a closed port.
    Rst = 0,
    /// An ICMP or ICMPv6 port unreachable sent back.
    Unreachable,
    /// No port unreachable: the host's ICMP rate limit had run out.
    RateLimited,
    /// No answer: the probe's checksum was wrong, and the kernel drops those.
    BadChecksum,
    /// No answer, as from the kernel: an RST, a fragment, a broadcast or
    /// multicast, a martian source, a truncated or inconsistent header.
    Unanswerable,
}

impl Answer {
    pub const COUNT: u32 = Answer::Unanswerable as u32 + 1;
    pub const ALL: [Answer; Answer::COUNT as usize] = [
        Answer::Rst,
        Answer::Unreachable,
        Answer::RateLimited,
        Answer::BadChecksum,
        Answer::Unanswerable,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Answer::Rst => "answer_rst",
            Answer::Unreachable => "answer_unreachable",
            Answer::RateLimited => "silent_rate_limited",
            Answer::BadChecksum => "silent_bad_checksum",
            Answer::Unanswerable => "silent_unanswerable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_decodes_from_its_number_and_nothing_past_them() {
        for reason in Reason::ALL {
            assert_eq!(Reason::decode(reason as u32), Some(reason));
        }
        assert_eq!(Reason::decode(Reason::COUNT), None);
        assert_eq!(Reason::decode(u32::MAX), None);
    }
}
