//! What can be wrong with credentials or TLS settings, found before any connection.

use std::path::PathBuf;

/// A credential or TLS setting that cannot be used. Messages name the flag and the variables
/// that set it, and never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A file named by a setting cannot be read.
    #[error("cannot read the {what} {} (set by {names}): {reason}", .path.display())]
    Unreadable {
        /// What the file should hold, e.g. `nkey seed file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The flag and variables that name it.
        names: String,
        /// Why not.
        reason: String,
    },
    /// A file was read but does not hold what it should.
    #[error("the {what} {} (set by {names}) {reason}", .path.display())]
    Malformed {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The flag and variables that name it.
        names: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An nkey seed is not a valid user seed.
    #[error("malformed nkey seed ({origin}; set by {names}): {reason}")]
    BadSeed {
        /// `given directly`, or the file it was read from.
        origin: String,
        /// The flag and variables that set it.
        names: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error(
        "a TLS client certificate and its key go together: {given} is set but {missing} is not"
    )]
    HalfClientCertificate {
        /// The half that is set.
        given: String,
        /// The half that is missing.
        missing: String,
    },
    /// A password without a user name.
    #[error("a password needs a user: {given} is set but {missing} is not")]
    PasswordWithoutUser {
        /// The password's flag and variables.
        given: String,
        /// The user's flag and variables.
        missing: String,
    },
}
