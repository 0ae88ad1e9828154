//! The subcommands.

pub mod credentials;
pub mod dev;
pub mod logs;
pub mod pool;
pub mod records;
pub mod status;
pub mod submit;
