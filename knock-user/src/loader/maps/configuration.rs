//! The configuration a generation runs with (settings, rules, port roles,
//! allow and deny lists), and the instance record every loader shares.

use aya::maps::lpm_trie::Key;
use knock_common::{Addr, Instance, PortRoles, RuleConfig, Settings};

use super::base::{Maps, MapsError, map_error};
use crate::loader::table::name;

impl Maps {
    /// The global settings of this configuration.
    pub fn settings(&self) -> Result<Settings, MapsError> {
        self.settings_map()?
            .get(&0, 0)
            .map_err(map_error(name::SETTINGS))
    }

    /// Replaces the global settings (at load; tests and benchmarks that
    /// change the host's ICMP limits).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), MapsError> {
        self.settings_map_mut()?
            .set(0, settings, 0)
            .map_err(map_error(name::SETTINGS))
    }

    /// What every loader of this pin directory shares.
    pub fn instance(&self) -> Result<Instance, MapsError> {
        self.instance_map()?
            .get(&0, 0)
            .map_err(map_error(name::INSTANCE))
    }

    pub fn set_instance(&mut self, instance: &Instance) -> Result<(), MapsError> {
        self.instance_map_mut()?
            .set(0, instance, 0)
            .map_err(map_error(name::INSTANCE))
    }

    /// The rule at each index of this configuration (free ones included).
    pub fn rules(&self) -> Result<Vec<RuleConfig>, MapsError> {
        let settings = self.settings()?;
        let rules = self.rules_map()?;
        (0..settings.rules)
            .map(|index| rules.get(&index, 0).map_err(map_error(name::RULES)))
            .collect()
    }

    /// Fills the configuration maps of a new generation.
    pub fn write_rules(
        &mut self,
        rules: &[RuleConfig],
        port_roles: &[(u32, PortRoles)],
    ) -> Result<(), MapsError> {
        let mut array = self.rules_map_mut()?;
        for (index, rule) in rules.iter().enumerate() {
            array
                .set(index as u32, rule, 0)
                .map_err(map_error(name::RULES))?;
        }
        let mut roles = self.port_roles_map_mut()?;
        for (index, role) in port_roles {
            roles
                .set(*index, role, 0)
                .map_err(map_error(name::PORT_ROLES))?;
        }
        Ok(())
    }

    /// Fills the allow and deny lists of a new generation.
    pub fn write_lists(
        &mut self,
        allow: &[(u32, Addr)],
        deny: &[(u32, Addr)],
    ) -> Result<(), MapsError> {
        let mut trie = self.allow_map_mut()?;
        for (prefix_len, addr) in allow {
            trie.insert(&Key::new(*prefix_len, *addr), &1, 0)
                .map_err(map_error(name::ALLOW))?;
        }
        let mut trie = self.deny_map_mut()?;
        for (prefix_len, addr) in deny {
            trie.insert(&Key::new(*prefix_len, *addr), &1, 0)
                .map_err(map_error(name::DENY))?;
        }
        Ok(())
    }
}
