//! Typed payloads for every directive key.

pub mod internal;
pub mod pool;
pub mod query;
pub mod record;
pub mod run;
pub mod worker;
