//! `drover pool`: supervises groups of worker processes of any language (DESIGN §9, seed 002).
//!
//! Each group runs `target` copies of one command, each with its own workerID
//! (`<pool>-<group>-<n>`). The pool follows every process in the registry, classifies how
//! each one ends, restarts the ones that died unexpectedly with backoff, shuts down on a
//! critical error, scales on request or from the queue, and replaces processes hard or soft.
//! It prints each process's output and ships it to Drover once the process has registered.
//!
//! The decisions live in [`group`], [`pool`] and [`output`] with no I/O, tested at exact
//! instants; the [`driver`] carries them out on real processes.

pub mod autoscale;
pub mod config;
mod control;
mod driver;
pub mod group;
mod lookups;
pub mod metrics;
pub mod output;
pub mod pool;
mod process;

pub use config::{ConfigError, GroupConfig, Overrides, PoolConfig, RestartPolicy};
pub use control::SERVICE_NAME;
pub use driver::{run, run_with_auth};
pub use pool::{Pool, PoolEnd};
