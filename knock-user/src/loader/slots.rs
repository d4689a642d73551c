//! Which rule index each rule owns. Grants, flows and progress are keyed by
//! rule index, so a rule keeps its index for as long as it exists, across
//! restarts and reloads; a removed rule's index is only handed out again once
//! its state is gone.

use knock_common::{MAX_RULES, RuleName};

/// Where a configuration's rules go, given the indexes a running filter
/// already assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The indexes of each rule (one per part), in the order the rules
    /// were given.
    pub slots: Vec<Vec<u32>>,
    /// Indexes whose rule is gone: their grants, flows and progress are
    /// removed once the new configuration is in place.
    pub retired: Vec<u32>,
    /// What `Instance::rules` holds once the new configuration is in place.
    pub names: [RuleName; MAX_RULES],
}

/// The rules do not fit beside the indexes still being retired.
#[derive(Debug, thiserror::Error)]
#[error(
    "no free rule index for rule `{0}`: the indexes of removed rules are reused only after their state is cleared; apply a configuration without the new rules first, then this one"
)]
pub struct NoFreeSlot(pub String);

/// Places `rules`, each a distinct name (fitting a `RuleName`) and how many
/// indexes it needs (a rotating rule needs two: the sequences of two
/// windows). A rule keeps the indexes it already has, lowest first, as its
/// parts in order; what it needs more takes the lowest free index, never
/// one retired by this same change.
#[expect(
    clippy::expect_used,
    reason = "rule names were validated to fit a RuleName"
)]
pub fn place(
    current: &[RuleName; MAX_RULES],
    rules: &[(&str, usize)],
) -> Result<Placement, NoFreeSlot> {
    let mut slots: Vec<Vec<u32>> = vec![Vec::new(); rules.len()];
    let mut taken = [false; MAX_RULES];
    let mut retired = Vec::new();
    for (slot, held) in current.iter().enumerate() {
        let Some(held) = held.get() else { continue };
        // A held index stays out of reach of new rules either way.
        taken[slot] = true;
        match rules.iter().position(|(name, _)| *name == held) {
            Some(i) if slots[i].len() < rules[i].1 => slots[i].push(slot as u32),
            _ => retired.push(slot as u32),
        }
    }
    let mut names_after = [RuleName::default(); MAX_RULES];
    for ((name, parts), placed) in rules.iter().zip(&mut slots) {
        while placed.len() < *parts {
            let free = taken
                .iter()
                .position(|t| !t)
                .ok_or_else(|| NoFreeSlot((*name).to_owned()))?;
            taken[free] = true;
            placed.push(free as u32);
        }
        for &slot in placed.iter() {
            names_after[slot as usize] = RuleName::new(name).expect("names fit a RuleName");
        }
    }
    Ok(Placement {
        slots,
        retired,
        names: names_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(names: &[(usize, &str)]) -> [RuleName; MAX_RULES] {
        let mut all = [RuleName::default(); MAX_RULES];
        for (slot, name) in names {
            all[*slot] = RuleName::new(name).expect("fits");
        }
        all
    }

    #[test]
    fn a_fresh_filter_places_rules_in_order() {
        let placement = place(&held(&[]), &[("ssh", 1), ("web", 1)]).expect("fits");
        assert_eq!(placement.slots, [vec![0], vec![1]]);
        assert!(placement.retired.is_empty());
        assert_eq!(placement.names[1].get(), Some("web"));
    }

    #[test]
    fn rules_keep_their_index_whatever_the_order() {
        let placement =
            place(&held(&[(0, "ssh"), (1, "web")]), &[("web", 1), ("ssh", 1)]).expect("fits");
        assert_eq!(placement.slots, [vec![1], vec![0]]);
    }

    #[test]
    fn a_removed_rules_index_is_not_reused_by_the_same_change() {
        let placement =
            place(&held(&[(0, "ssh"), (1, "web")]), &[("dns", 1), ("web", 1)]).expect("fits");
        assert_eq!(
            placement.slots,
            [vec![2], vec![1]],
            "dns must not inherit ssh's grants"
        );
        assert_eq!(placement.retired, [0]);
        assert_eq!(placement.names[0].get(), None);
        // The next change may use it.
        let next = place(&placement.names, &[("dns", 1), ("web", 1), ("ntp", 1)]).expect("fits");
        assert_eq!(next.slots, [vec![2], vec![1], vec![0]]);
        assert!(next.retired.is_empty());
    }

    #[test]
    fn a_rotating_rule_keeps_both_its_indexes_in_order() {
        let placement = place(&held(&[]), &[("ssh", 1), ("rot", 2)]).expect("fits");
        assert_eq!(placement.slots, [vec![0], vec![1, 2]]);
        assert_eq!(placement.names[2].get(), Some("rot"));
        // Reordered, it keeps them, lowest first.
        let again = place(&placement.names, &[("rot", 2), ("ssh", 1)]).expect("fits");
        assert_eq!(again.slots, [vec![1, 2], vec![0]]);
        assert!(again.retired.is_empty());
        // No longer rotating: it keeps its first index, the second retires.
        let plain = place(&again.names, &[("rot", 1), ("ssh", 1)]).expect("fits");
        assert_eq!(plain.slots, [vec![1], vec![0]]);
        assert_eq!(plain.retired, [2]);
        // Rotating again once that change is made: a second index again.
        let back = place(&plain.names, &[("rot", 2), ("ssh", 1)]).expect("fits");
        assert_eq!(back.slots, [vec![1, 2], vec![0]]);
    }

    #[test]
    fn without_a_free_index_the_change_is_refused() {
        let full: Vec<String> = (0..MAX_RULES).map(|i| format!("r{i}")).collect();
        let current = held(
            &full
                .iter()
                .enumerate()
                .map(|(i, n)| (i, n.as_str()))
                .collect::<Vec<_>>(),
        );
        let error = place(&current, &[("new", 1)]).expect_err("no room");
        assert!(error.to_string().contains("`new`"), "{error}");
    }
}
