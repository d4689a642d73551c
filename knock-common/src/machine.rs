//! The knock state machine: what one TCP SYN or UDP datagram does to one
//! source's progress through one rule. Plain Rust, so the XDP program, the
//! loader and the host unit tests all run the same code.

use crate::{Knock, MAX_STEPS, Progress, ResetCause, RuleConfig};

/// What the packet does to the stored progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The packet is no step for this source: afterwards it has no progress.
    Idle,
    /// A retransmitted or duplicated copy of the step just accepted: ignored.
    Duplicate,
    /// The packet is no knock at all and the stored sequence has timed out:
    /// it stays as it is, for the next knock to report the timeout.
    Untouched,
    /// A step was accepted and more remain: store this progress.
    Advanced(Progress),
    /// The last step was accepted: drop the progress and grant.
    Granted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Progress was thrown away before the packet was considered as a first
    /// step, and why.
    pub reset: Option<ResetCause>,
    pub outcome: Outcome,
}

/// Runs one packet (`knock`, arriving at `now_ns`) through one rule for a
/// source whose stored progress is `progress`; `knock_port` says whether
/// `knock` is a step of any rule, this one or another.
///
/// The expected next step advances; a copy of the step just accepted is
/// ignored; anything else resets, and a reset packet that is the first step
/// starts a new attempt (so a client retrying after a failure is not
/// punished twice). A sequence older than the rule's timeout is no longer
/// mid-sequence: the next knock resets it, other packets leave it alone (so
/// the filter need not look up the progress of sources whose every
/// sequence has lapsed).
#[inline(always)]
pub fn on_packet(
    rule: &RuleConfig,
    progress: Option<&Progress>,
    knock: Knock,
    knock_port: bool,
    now_ns: u64,
) -> Transition {
    let steps = if (rule.steps as usize) < MAX_STEPS {
        rule.steps as usize
    } else {
        MAX_STEPS
    };
    let mut reset = None;
    // Progress made through a sequence the rule has since changed (a
    // reload) is no progress at all.
    let progress = progress.filter(|p| p.sequence_tag == rule.sequence_tag);
    if let Some(progress) = progress {
        let next = progress.next_step as usize;
        if now_ns.wrapping_sub(progress.started_ns) > rule.sequence_timeout_ns {
            if !knock_port {
                return Transition {
                    reset: None,
                    outcome: Outcome::Untouched,
                };
            }
            reset = Some(ResetCause::Timeout);
        } else if next < steps && step_at(&rule.sequence, next) == Some(knock) {
            return Transition {
                reset: None,
                outcome: accept(rule, steps, progress.started_ns, next),
            };
        } else if next > 0 && next <= steps && step_at(&rule.sequence, next - 1) == Some(knock) {
            return Transition {
                reset: None,
                outcome: Outcome::Duplicate,
            };
        } else {
            reset = Some(ResetCause::WrongPacket);
        }
    }
    let outcome = if steps > 0 && rule.sequence[0] == knock {
        accept(rule, steps, now_ns, 0)
    } else {
        Outcome::Idle
    };
    Transition { reset, outcome }
}

/// `sequence.get(index)`, with the index masked so the BPF verifier sees
/// its bound on the very register used for the access.
#[inline(always)]
fn step_at(sequence: &[Knock; MAX_STEPS], index: usize) -> Option<Knock> {
    const _: () = assert!(MAX_STEPS.is_power_of_two());
    let masked = index & (MAX_STEPS - 1);
    if masked != index {
        return None;
    }
    Some(sequence[masked])
}

#[inline(always)]
fn accept(rule: &RuleConfig, steps: usize, started_ns: u64, accepted: usize) -> Outcome {
    if accepted + 1 >= steps {
        Outcome::Granted
    } else {
        Outcome::Advanced(Progress {
            started_ns,
            next_step: accepted as u32 + 1,
            sequence_tag: rule.sequence_tag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn rule(sequence: &[Knock]) -> RuleConfig {
        let mut rule = RuleConfig {
            steps: sequence.len() as u32,
            sequence_timeout_ns: 10 * SECOND,
            open_for_ns: 60 * SECOND,
            sequence_tag: crate::sequence_tag(sequence),
            ..Default::default()
        };
        rule.sequence[..sequence.len()].copy_from_slice(sequence);
        rule
    }

    fn article_rule() -> RuleConfig {
        rule(&[Knock::tcp(3721), Knock::udp(4728), Knock::tcp(6742)])
    }

    /// Feeds packets (knock, time) through the machine like the XDP program
    /// does, returning each transition and whether a grant resulted.
    fn run(rule: &RuleConfig, packets: &[(Knock, u64)]) -> (Vec<Transition>, bool) {
        let mut progress: Option<Progress> = None;
        let mut granted = false;
        let mut transitions = Vec::new();
        for &(knock, now) in packets {
            let knock_port = rule.sequence[..rule.steps as usize].contains(&knock);
            let t = on_packet(rule, progress.as_ref(), knock, knock_port, now);
            match t.outcome {
                Outcome::Idle => progress = None,
                Outcome::Duplicate | Outcome::Untouched => {}
                Outcome::Advanced(p) => progress = Some(p),
                Outcome::Granted => {
                    progress = None;
                    granted = true;
                }
            }
            transitions.push(t);
        }
        (transitions, granted)
    }

    #[test]
    fn right_sequence_grants() {
        let r = article_rule();
        let (t, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::udp(4728), 1),
                (Knock::tcp(6742), 2),
            ],
        );
        assert!(granted);
        assert_eq!(
            t[0].outcome,
            Outcome::Advanced(Progress {
                started_ns: 0,
                next_step: 1,
                sequence_tag: r.sequence_tag
            })
        );
        assert_eq!(
            t[1].outcome,
            Outcome::Advanced(Progress {
                started_ns: 0,
                next_step: 2,
                sequence_tag: r.sequence_tag
            })
        );
        assert_eq!(t[2].outcome, Outcome::Granted);
        assert!(t.iter().all(|t| t.reset.is_none()));
    }

    #[test]
    fn protocol_is_part_of_the_step() {
        let r = article_rule();
        let (_, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::tcp(4728), 1),
                (Knock::tcp(6742), 2),
            ],
        );
        assert!(!granted);
    }

    #[test]
    fn wrong_order_never_grants() {
        let r = article_rule();
        let (t, granted) = run(
            &r,
            &[
                (Knock::udp(4728), 0),
                (Knock::tcp(3721), 1),
                (Knock::tcp(6742), 2),
            ],
        );
        assert!(!granted);
        assert_eq!(t[0].outcome, Outcome::Idle);
        assert_eq!(t[2].reset, Some(ResetCause::WrongPacket));
    }

    #[test]
    fn duplicate_of_last_step_is_ignored() {
        let r = article_rule();
        let (t, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::tcp(3721), 1),
                (Knock::udp(4728), 2),
                (Knock::udp(4728), 3),
                (Knock::tcp(6742), 4),
            ],
        );
        assert!(granted);
        assert_eq!(t[1].outcome, Outcome::Duplicate);
        assert_eq!(t[3].outcome, Outcome::Duplicate);
    }

    #[test]
    fn copy_of_an_older_step_resets() {
        let r = article_rule();
        let (t, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::udp(4728), 1),
                (Knock::tcp(3721), 2),
                (Knock::tcp(6742), 3),
            ],
        );
        assert!(!granted);
        // The stale first step resets but also starts a new attempt.
        assert_eq!(t[2].reset, Some(ResetCause::WrongPacket));
        assert_eq!(
            t[2].outcome,
            Outcome::Advanced(Progress {
                started_ns: 2,
                next_step: 1,
                sequence_tag: r.sequence_tag
            })
        );
        assert_eq!(t[3].reset, Some(ResetCause::WrongPacket));
    }

    #[test]
    fn other_packet_mid_sequence_resets() {
        let r = article_rule();
        let (t, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::tcp(80), 1),
                (Knock::udp(4728), 2),
                (Knock::tcp(6742), 3),
            ],
        );
        assert!(!granted);
        assert_eq!(
            t[1],
            Transition {
                reset: Some(ResetCause::WrongPacket),
                outcome: Outcome::Idle
            }
        );
    }

    #[test]
    fn ascending_scan_cannot_complete() {
        let r = article_rule();
        let packets: Vec<_> = (1..=65535u16)
            .map(|p| (Knock::tcp(p), u64::from(p)))
            .collect();
        let (_, granted) = run(&r, &packets);
        assert!(!granted);
    }

    #[test]
    fn retry_after_failure_succeeds_at_once() {
        let r = article_rule();
        let (_, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::tcp(6742), 1),
                (Knock::tcp(3721), 2),
                (Knock::udp(4728), 3),
                (Knock::tcp(6742), 4),
            ],
        );
        assert!(granted);
    }

    #[test]
    fn sequence_must_complete_within_timeout() {
        let r = article_rule();
        let late = 10 * SECOND + 1;
        let (t, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::udp(4728), SECOND),
                (Knock::tcp(6742), late),
            ],
        );
        assert!(!granted);
        assert_eq!(
            t[2],
            Transition {
                reset: Some(ResetCause::Timeout),
                outcome: Outcome::Idle
            }
        );

        let (_, granted) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::udp(4728), SECOND),
                (Knock::tcp(6742), 10 * SECOND),
            ],
        );
        assert!(granted, "completing exactly at the timeout is in time");
    }

    #[test]
    fn a_lapsed_sequence_waits_for_the_next_knock() {
        let r = article_rule();
        let (t, _) = run(
            &r,
            &[
                (Knock::tcp(3721), 0),
                (Knock::tcp(80), 11 * SECOND),
                (Knock::udp(4728), 12 * SECOND),
            ],
        );
        assert_eq!(
            t[1],
            Transition {
                reset: None,
                outcome: Outcome::Untouched
            }
        );
        assert_eq!(
            t[2],
            Transition {
                reset: Some(ResetCause::Timeout),
                outcome: Outcome::Idle
            }
        );
    }

    #[test]
    fn first_step_after_timeout_restarts() {
        let r = article_rule();
        let t = on_packet(
            &r,
            Some(&Progress {
                started_ns: 0,
                next_step: 2,
                sequence_tag: r.sequence_tag,
            }),
            Knock::tcp(3721),
            true,
            20 * SECOND,
        );
        assert_eq!(t.reset, Some(ResetCause::Timeout));
        assert_eq!(
            t.outcome,
            Outcome::Advanced(Progress {
                started_ns: 20 * SECOND,
                next_step: 1,
                sequence_tag: r.sequence_tag
            })
        );
    }

    #[test]
    fn single_step_rule_grants_at_once() {
        let r = rule(&[Knock::udp(9)]);
        assert_eq!(
            on_packet(&r, None, Knock::udp(9), true, 0).outcome,
            Outcome::Granted
        );
    }

    #[test]
    fn corrupt_progress_never_indexes_out_of_bounds() {
        let r = article_rule();
        for next_step in [16, 17, u32::MAX] {
            let p = Progress {
                started_ns: 0,
                next_step,
                sequence_tag: r.sequence_tag,
            };
            let t = on_packet(&r, Some(&p), Knock::tcp(6742), true, 1);
            assert_eq!(t.reset, Some(ResetCause::WrongPacket));
        }
    }

    #[test]
    fn progress_through_a_changed_sequence_counts_for_nothing() {
        let old = rule(&[Knock::tcp(3721), Knock::udp(4728), Knock::tcp(6742)]);
        let r = rule(&[Knock::tcp(1111), Knock::udp(2222), Knock::tcp(6742)]);
        assert_ne!(old.sequence_tag, r.sequence_tag);
        let progress = Progress {
            started_ns: 0,
            next_step: 2,
            sequence_tag: old.sequence_tag,
        };
        // The old sequence's last step, which is also the new one's: no grant.
        let t = on_packet(&r, Some(&progress), Knock::tcp(6742), true, SECOND);
        assert_eq!(
            t,
            Transition {
                reset: None,
                outcome: Outcome::Idle
            }
        );
        // The new sequence starts afresh and its progress carries its tag.
        let t = on_packet(&r, Some(&progress), Knock::tcp(1111), true, SECOND);
        assert_eq!(
            t.outcome,
            Outcome::Advanced(Progress {
                started_ns: SECOND,
                next_step: 1,
                sequence_tag: r.sequence_tag
            })
        );
    }
}
