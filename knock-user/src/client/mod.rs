//! The client side: `xknock knock` sends a rule's sequence (fixed,
//! one-time or rotating) or an SPA request to a host.

pub mod knock;
pub mod sent;
pub mod spa;
