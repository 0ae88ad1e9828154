//! The names of each setting: its Drover variable, its NATS fallback and its flag.

/// One setting's names.
pub(crate) struct Var {
    /// `DROVER_NATS_*`: wins over the NATS name.
    pub(crate) drover: &'static str,
    /// The NATS tools' variable.
    pub(crate) nats: &'static str,
    /// The command-line flag.
    pub(crate) flag: &'static str,
}

impl Var {
    /// `--creds, DROVER_NATS_CREDS or NATS_CREDS`: every way to set it, for messages.
    pub(crate) fn names(&self) -> String {
        format!("{}, {} or {}", self.flag, self.drover, self.nats)
    }
}

pub(crate) const CREDS: Var = Var {
    drover: "DROVER_NATS_CREDS",
    nats: "NATS_CREDS",
    flag: "--creds",
};
pub(crate) const NKEY: Var = Var {
    drover: "DROVER_NATS_NKEY",
    nats: "NATS_NKEY",
    flag: "--nkey",
};
pub(crate) const TOKEN: Var = Var {
    drover: "DROVER_NATS_TOKEN",
    nats: "NATS_TOKEN",
    flag: "--token",
};
pub(crate) const USER: Var = Var {
    drover: "DROVER_NATS_USER",
    nats: "NATS_USER",
    flag: "--user",
};
pub(crate) const PASSWORD: Var = Var {
    drover: "DROVER_NATS_PASSWORD",
    nats: "NATS_PASSWORD",
    flag: "--password",
};
pub(crate) const TLS_CA: Var = Var {
    drover: "DROVER_NATS_TLS_CA",
    nats: "NATS_CA",
    flag: "--tlsca",
};
pub(crate) const TLS_CERT: Var = Var {
    drover: "DROVER_NATS_TLS_CERT",
    nats: "NATS_CERT",
    flag: "--tlscert",
};
pub(crate) const TLS_KEY: Var = Var {
    drover: "DROVER_NATS_TLS_KEY",
    nats: "NATS_KEY",
    flag: "--tlskey",
};

/// Every variable read, Drover's and the NATS fallbacks (deployment checks list them).
pub const ENV_VARS: &[&str] = &[
    "DROVER_NATS_CREDS",
    "NATS_CREDS",
    "DROVER_NATS_NKEY",
    "NATS_NKEY",
    "DROVER_NATS_TOKEN",
    "NATS_TOKEN",
    "DROVER_NATS_USER",
    "NATS_USER",
    "DROVER_NATS_PASSWORD",
    "NATS_PASSWORD",
    "DROVER_NATS_TLS_CA",
    "NATS_CA",
    "DROVER_NATS_TLS_CERT",
    "NATS_CERT",
    "DROVER_NATS_TLS_KEY",
    "NATS_KEY",
];

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&Var; 8] = [
        &CREDS, &NKEY, &TOKEN, &USER, &PASSWORD, &TLS_CA, &TLS_CERT, &TLS_KEY,
    ];

    #[test]
    fn env_vars_lists_every_name_once() {
        let names: Vec<&str> = ALL.iter().flat_map(|var| [var.drover, var.nats]).collect();
        assert_eq!(names, ENV_VARS);
        let flags: std::collections::BTreeSet<&str> = ALL.iter().map(|var| var.flag).collect();
        assert_eq!(flags.len(), ALL.len());
    }
}
