//! The xknock XDP filter with every decision about one source logged
//! through aya-log: what `xknock trace ADDR` swaps onto the links while it
//! runs. Everything else is the filter's own code, decision for decision.
#![no_std]
#![no_main]

mod conceal;
mod filter;
mod object;
mod parse;
mod spa;
mod trace;
