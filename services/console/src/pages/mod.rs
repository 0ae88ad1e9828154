//! The console's pages, rendered on the server with maud.

pub mod layout;
pub mod login;
pub mod overview;
pub mod pools;
pub mod run;
pub mod runs;
pub mod submit;
pub mod workers;
