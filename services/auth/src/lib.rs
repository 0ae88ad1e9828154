//! Drover's auth service: nats-server's auth callout for workers, pools and clients.
//!
//! Services authenticate with static keys in the server configuration. Every other
//! connection is sent here: the credential it presents (an nkey signature or a token) is
//! looked up in `DROVER_CREDENTIALS`, and the connection is admitted with the permissions
//! of that credential's role (`drover_protocol::grants`), or refused.

pub mod callout;
pub mod credential;
pub mod jwt;
pub mod metrics;
mod server;
pub mod setup;

pub use server::{run, AuthConfig};
