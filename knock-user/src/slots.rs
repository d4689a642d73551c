//! Which rule index each rule owns. Grants, flows and progress are keyed by
//! rule index, so a rule keeps its index for as long as it exists, across
//! restarts and reloads; a removed rule's index is only handed out again once
//! its state is gone.

use knock_common::{MAX_RULES, RuleName};

/// Where a configuration's rules go, given the indexes a running filter
/// already assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The index of each rule, in the order the names were given.
    pub slots: Vec<u32>,
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

/// Places `names` (distinct, each fitting a `RuleName`): a name the filter
/// already has keeps its index; a new one takes the lowest free index,
/// never one retired by this same change.
pub fn place(current: &[RuleName; MAX_RULES], names: &[&str]) -> Result<Placement, NoFreeSlot> {
    let mut slots = vec![None; names.len()];
    let mut taken = [false; MAX_RULES];
    for (slot, held) in current.iter().enumerate() {
        let Some(held) = held.get() else { continue };
        // A held index stays out of reach of new rules either way.
        taken[slot] = true;
        if let Some(i) = names.iter().position(|name| *name == held) {
            slots[i] = Some(slot as u32);
        }
    }
    let retired: Vec<u32> = current
        .iter()
        .enumerate()
        .filter(|(slot, held)| held.get().is_some() && !slots.contains(&Some(*slot as u32)))
        .map(|(slot, _)| slot as u32)
        .collect();
    let mut names_after = [RuleName::default(); MAX_RULES];
    let mut placed = Vec::with_capacity(names.len());
    for (name, slot) in names.iter().zip(slots) {
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let free = taken
                    .iter()
                    .position(|t| !t)
                    .ok_or_else(|| NoFreeSlot((*name).to_owned()))?;
                taken[free] = true;
                free as u32
            }
        };
        names_after[slot as usize] = RuleName::new(name).expect("names fit a RuleName");
        placed.push(slot);
    }
    Ok(Placement {
        slots: placed,
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
        let placement = place(&held(&[]), &["ssh", "web"]).expect("fits");
        assert_eq!(placement.slots, [0, 1]);
        assert!(placement.retired.is_empty());
        assert_eq!(placement.names[1].get(), Some("web"));
    }

    #[test]
    fn rules_keep_their_index_whatever_the_order() {
        let placement = place(&held(&[(0, "ssh"), (1, "web")]), &["web", "ssh"]).expect("fits");
        assert_eq!(placement.slots, [1, 0]);
    }

    #[test]
    fn a_removed_rules_index_is_not_reused_by_the_same_change() {
        let placement = place(&held(&[(0, "ssh"), (1, "web")]), &["dns", "web"]).expect("fits");
        assert_eq!(placement.slots, [2, 1], "dns must not inherit ssh's grants");
        assert_eq!(placement.retired, [0]);
        assert_eq!(placement.names[0].get(), None);
        // The next change may use it.
        let next = place(&placement.names, &["dns", "web", "ntp"]).expect("fits");
        assert_eq!(next.slots, [2, 1, 0]);
        assert!(next.retired.is_empty());
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
        let error = place(&current, &["new"]).expect_err("no room");
        assert!(error.to_string().contains("`new`"), "{error}");
    }
}
