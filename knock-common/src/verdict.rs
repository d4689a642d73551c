//! What became of a packet, as counted per CPU: the filter's verdict by
//! reason (`COUNTERS`) and concealment's answer (`ANSWERS`). Both are
//! indexed by their enum's number and printed by name, so one macro writes
//! each enum's numbering, its `ALL`, `COUNT` and `name()` from one list.

/// A `#[repr(u32)]` enum numbered from zero in the order written, with
/// `ALL` (every variant, in that order), `COUNT`, `name()` (the text given
/// beside each variant) and `decode()` (the variant of a number).
macro_rules! counted {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident => $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in the order of their numbers (from zero).
            pub const ALL: [$name; $name::COUNT as usize] = [$($name::$variant,)+];
            /// How many there are: the slots of their counters.
            pub const COUNT: u32 = [$($name::$variant,)+].len() as u32;

            /// The name it is printed under.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant whose number is `code`, if there is one.
            pub fn decode(code: u32) -> Option<$name> {
                $name::ALL.get(code as usize).copied()
            }
        }
    };
}

counted! {
    /// Per-CPU counters: one slot per verdict reason.
    pub enum Reason {
        /// Not IPv4 or IPv6.
        PassNotIp => "pass_not_ip",
        /// IP, but neither TCP nor UDP (ICMP, ESP, ...).
        PassOtherProtocol => "pass_other_protocol",
        /// A non-first fragment: it cannot be reassembled without its first fragment.
        PassLaterFragment => "pass_later_fragment",
        /// TCP/UDP to a port that no rule uses.
        PassUnprotected => "pass_unprotected",
        /// To a protected port, from a source with a live grant.
        PassGranted => "pass_granted",
        /// To a protected port, part of a flow admitted earlier.
        PassAdmittedFlow => "pass_admitted_flow",
        /// To a protected port, from an address on the allowlist.
        PassAllowlisted => "pass_allowlisted",
        /// An ICMP echo request that was a knock step: it passes, and the host
        /// answers it as it answers every ping.
        PassEchoKnock => "pass_echo_knock",
        /// TCP/UDP to port 0, which no rule can use: it passes as to any
        /// unprotected port, and first clears its peer's steered flow of the
        /// same source port, so the host's answer leaves as the host made it.
        PassPortZero => "pass_port_zero",
        /// A knock step that advanced a sequence (dropped like every knock).
        DropKnockAdvanced => "drop_knock_advanced",
        /// A knock step that completed a sequence and created a grant.
        DropKnockGranted => "drop_knock_granted",
        /// A retransmitted copy of the step just accepted.
        DropKnockDuplicate => "drop_knock_duplicate",
        /// To a knock port, but no step for this source (dropped: knock ports look filtered).
        DropKnockPort => "drop_knock_port",
        /// To a protected port from a source without a grant or admitted flow.
        DropProtected => "drop_protected",
        /// A knock or protected-port packet from an address on the denylist.
        DropDenied => "drop_denied",
        /// A knock from a source serving a penalty for repeated failures.
        DropPenalized => "drop_penalized",
        /// A datagram to an SPA port, handed to the loader to verify.
        DropSpaCopied => "drop_spa_copied",
        /// A datagram to an SPA port over the per-CPU rate, or with the
        /// loader's ring full: not looked at.
        DropSpaShed => "drop_spa_shed",
        /// A datagram to an SPA port that cannot be an SPA packet: its size is
        /// outside what fwknop sends, or it is a fragment.
        DropSpaUnfit => "drop_spa_unfit",
        /// Headers truncated or unparsable: fails closed.
        DropMalformed => "drop_malformed",
        /// More VLAN tags than `MAX_VLAN_DEPTH`.
        DropTooManyVlanTags => "drop_too_many_vlan_tags",
        /// More IPv6 extension headers than `MAX_IPV6_EXT_HEADERS`.
        DropExtHeaderChainTooLong => "drop_ext_header_chain_too_long",
    }
}

impl Reason {
    pub const fn passes(self) -> bool {
        (self as u32) <= Reason::PassPortZero as u32
    }

    /// Stopped at a knock port, a protected port or an SPA port: with
    /// `conceal = "closed"` the host's stack answers it as a closed port.
    pub const fn conceals(self) -> bool {
        (self as u32) >= Reason::DropKnockAdvanced as u32
            && (self as u32) <= Reason::DropSpaUnfit as u32
    }
}

counted! {
    /// Per-CPU counters of concealment (`ANSWERS`, one slot each; none move
    /// with `conceal = "drop"`): packets steered to the host's closed port
    /// 0, and the host's answers to them on their way out.
    pub enum Answer {
        /// A stopped packet steered to port 0, for the host to answer as a
        /// closed port (or to stay silent, as it would there).
        Steered => "steered_to_host",
        /// A stopped packet that could not be recorded for its answer:
        /// dropped, never passed with ports its answer could not get back.
        Unrecorded => "silent_unrecorded",
        /// An answer of the host (an RST, an ICMP error) to a steered
        /// packet, given back the packet's ports.
        Restored => "answer_restored",
        /// An answer of the host to a probe of port 0 itself: sent as the
        /// host made it.
        PortZero => "answer_port_zero",
        /// An answer from port 0 whose flow's slot another flow took since
        /// (a collision, rare but for a flood): dropped, as if lost, rather
        /// than sent with ports that are not the prober's.
        Unmatched => "silent_unmatched",
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

    /// Counters are indexed by these numbers and printed by these names,
    /// so both stay as they were before the macro wrote them.
    #[test]
    fn numbers_and_names_are_the_ones_counters_are_read_by() {
        let reasons: Vec<(u32, &str)> = Reason::ALL.iter().map(|r| (*r as u32, r.name())).collect();
        assert_eq!(
            reasons,
            [
                (0, "pass_not_ip"),
                (1, "pass_other_protocol"),
                (2, "pass_later_fragment"),
                (3, "pass_unprotected"),
                (4, "pass_granted"),
                (5, "pass_admitted_flow"),
                (6, "pass_allowlisted"),
                (7, "pass_echo_knock"),
                (8, "pass_port_zero"),
                (9, "drop_knock_advanced"),
                (10, "drop_knock_granted"),
                (11, "drop_knock_duplicate"),
                (12, "drop_knock_port"),
                (13, "drop_protected"),
                (14, "drop_denied"),
                (15, "drop_penalized"),
                (16, "drop_spa_copied"),
                (17, "drop_spa_shed"),
                (18, "drop_spa_unfit"),
                (19, "drop_malformed"),
                (20, "drop_too_many_vlan_tags"),
                (21, "drop_ext_header_chain_too_long"),
            ]
        );
        let answers: Vec<(u32, &str)> = Answer::ALL.iter().map(|a| (*a as u32, a.name())).collect();
        assert_eq!(
            answers,
            [
                (0, "steered_to_host"),
                (1, "silent_unrecorded"),
                (2, "answer_restored"),
                (3, "answer_port_zero"),
                (4, "silent_unmatched"),
            ]
        );
        assert_eq!(Answer::decode(Answer::COUNT), None);
    }

    #[test]
    fn passing_and_concealing_reasons_are_the_ones_they_were() {
        let passing: Vec<Reason> = Reason::ALL.into_iter().filter(|r| r.passes()).collect();
        assert_eq!(passing, &Reason::ALL[..9]);
        let concealing: Vec<Reason> = Reason::ALL.into_iter().filter(|r| r.conceals()).collect();
        assert_eq!(concealing, &Reason::ALL[9..19]);
    }
}
