#![no_std]
// Library target so knock-user can name this crate as a build dependency.
