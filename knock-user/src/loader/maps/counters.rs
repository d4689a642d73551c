//! What the filter counted (verdicts, answers, lost events), and how full
//! its bounded maps are.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use knock_common::{Answer, Reason};

use super::base::{Maps, MapsError, map_data, map_error};
use crate::loader::table::{self, Kind, name};

/// How full a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Occupancy {
    pub entries: u32,
    pub max_entries: u32,
}

impl Maps {
    /// Verdict counters summed over all CPUs, by reason.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, MapsError> {
        per_cpu_totals(
            name::COUNTERS,
            &self.counters_map()?,
            Reason::ALL.map(|reason| (reason as u32, reason.name())),
        )
    }

    /// What concealment did, by kind of answer, summed over CPUs.
    pub fn answers(&self) -> Result<BTreeMap<&'static str, u64>, MapsError> {
        per_cpu_totals(
            name::ANSWERS,
            &self.answers_map()?,
            Answer::ALL.map(|answer| (answer as u32, answer.name())),
        )
    }

    /// Events the full ring buffer could not take, since the filter was made.
    pub fn lost_events(&self) -> Result<u64, MapsError> {
        let totals = per_cpu_totals(name::LOST_EVENTS, &self.lost_events_map()?, [(0, "lost")])?;
        Ok(totals["lost"])
    }

    /// How full each bounded state map (those the configuration sizes) is.
    #[expect(clippy::expect_used, reason = "the map table sizes hash maps only")]
    pub fn occupancy(&self) -> Result<BTreeMap<&'static str, Occupancy>, MapsError> {
        let mut all = BTreeMap::new();
        let bounded = table::TABLE
            .iter()
            .filter(|row| row.kind == Kind::State && row.limit.is_some());
        for row in bounded {
            if row.name == name::FIRST_STEPS {
                all.insert(row.name, self.first_step_occupancy()?);
                continue;
            }
            let map = self.map(row.name)?;
            let max_entries = map_data(map)
                .info()
                .map_err(map_error(row.name))?
                .max_entries();
            let keys = (row.keys)(map)
                .expect("the configuration sizes hash maps only")
                .map_err(map_error(row.name))?;
            all.insert(
                row.name,
                Occupancy {
                    entries: keys as u32,
                    max_entries,
                },
            );
        }
        Ok(all)
    }
}

/// The named slots of a per-CPU counter array, each summed over CPUs.
fn per_cpu_totals(
    name: &'static str,
    counters: &PerCpuArray<&MapData, u64>,
    slots: impl IntoIterator<Item = (u32, &'static str)>,
) -> Result<BTreeMap<&'static str, u64>, MapsError> {
    slots
        .into_iter()
        .map(|(index, label)| {
            let per_cpu = counters.get(&index, 0).map_err(map_error(name))?;
            Ok((label, per_cpu.iter().sum()))
        })
        .collect()
}
