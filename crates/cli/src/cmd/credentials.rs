//! `drover credentials`: the keys of the secured setup, and the credentials of workers,
//! pools and clients (docs/security.md).
//!
//! `init` writes files and connects to nothing. `create`, `list` and `revoke` work on the
//! `DROVER_CREDENTIALS` bucket, so they connect with the services' key (`--nkey services.nk`).
//! A credential's secret is generated here and written only to the file it is given: the
//! bucket keeps its public key or the hash of its token.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use drover_auth::credential::{self, ClientRole, Credential, Proof, Scope, Store};
use drover_auth::setup::{self, DEFAULT_ACCOUNT};
use drover_protocol::{PoolId, WorkerId};
use nkeys::KeyPair;

use crate::client::Drover;
use crate::error::CliError;
use crate::output;

/// `drover credentials ...`.
#[derive(Debug, Subcommand)]
pub enum Credentials {
    /// Generate the issuer and services keys and the nats-server configuration, once.
    Init(Init),
    /// Create a credential for a worker, a pool or a client.
    #[command(subcommand)]
    Create(Create),
    /// List credentials, revoked ones included.
    List(List),
    /// Revoke a credential: its holder cannot connect from its next connection on.
    Revoke(Revoke),
}

/// `drover credentials init`.
#[derive(Debug, Args)]
pub struct Init {
    /// Directory to write issuer.nk, services.nk and auth.conf into (never overwritten).
    pub dir: PathBuf,
    /// The account the configuration defines.
    #[arg(long, default_value = DEFAULT_ACCOUNT)]
    pub account: String,
    /// Also generate a private CA with server and client certificates into DIR/tls, and
    /// tls.conf (mutual TLS) to include beside auth.conf. For trying TLS; production uses
    /// its own CA.
    #[arg(long)]
    pub tls: bool,
    /// Another name the server certificate is valid for (with --tls; repeatable).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    pub tls_names: Vec<String>,
    /// Succeed without writing anything when DIR already holds the keys (for a container
    /// that runs at every start).
    #[arg(long)]
    pub if_missing: bool,
    /// Give DIR and everything written to this user and group (UID:GID), for services that
    /// run as another user than the one writing the keys.
    #[arg(long, value_name = "UID:GID", value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

/// `drover credentials create ...`.
#[derive(Debug, Subcommand)]
pub enum Create {
    /// A worker that may act only as this workerID.
    Worker {
        /// The workerID.
        worker_id: String,
        #[command(flatten)]
        output: Output,
    },
    /// A pool: its own connection, and its processes as `<poolID>-<group>-<n>`.
    Pool {
        /// The poolID.
        pool_id: String,
        #[command(flatten)]
        output: Output,
    },
    /// A client: `read` (queries and watches) or `submit` (also submit and cancel).
    Client {
        /// The client's name (the credential's name unless --name says otherwise).
        #[arg(value_name = "NAME")]
        client: String,
        /// What the client may do.
        #[arg(long, value_enum)]
        role: ClientRole,
        /// The kind of secret: an nkey (the holder signs), or a bearer token (for tools that
        /// cannot sign).
        #[arg(long, value_enum, default_value_t = Secret::Nkey)]
        secret: Secret,
        #[command(flatten)]
        output: Output,
    },
}

/// The kind of a client's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Secret {
    /// An Ed25519 nkey seed.
    Nkey,
    /// A bearer token.
    Token,
}

/// Where the secret goes, and the credential's name.
#[derive(Debug, Args)]
pub struct Output {
    /// The credential's name (default: the workerID, poolID or client name).
    #[arg(long)]
    pub name: Option<String>,
    /// File to write the secret to, readable by its owner only (default: <name>.nk or
    /// <name>.token in the current directory; `-` for stdout).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Succeed without creating anything when --out already exists (for a container that
    /// runs at every start).
    #[arg(long, requires = "out")]
    pub if_missing: bool,
}

/// `drover credentials list`.
#[derive(Debug, Args)]
pub struct List {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `drover credentials revoke`.
#[derive(Debug, Args)]
pub struct Revoke {
    /// The credential's name.
    pub name: String,
    /// Print the revoked credential as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A credential ready to store, and its secret.
struct New {
    credential: Credential,
    secret: String,
    out: PathBuf,
    how: &'static str,
}

impl Credentials {
    /// Checks the input before any connection; `init` runs here, as it needs none.
    pub fn run_offline(&self) -> Result<bool, CliError> {
        match self {
            Credentials::Init(init) => init.run().map(|()| true),
            Credentials::Create(create) => {
                let output = create.output();
                if let (true, Some(out)) = (output.if_missing, &output.out) {
                    if out.exists() {
                        eprintln!("kept {}", out.display());
                        return Ok(true);
                    }
                }
                create.prepare().map(|_| false)
            }
            Credentials::List(_) | Credentials::Revoke(_) => Ok(false),
        }
    }

    /// Runs `create`, `list` or `revoke` against the bucket.
    pub async fn run(self, drover: &Drover) -> Result<(), CliError> {
        let js = async_nats::jetstream::new(drover.nats().clone());
        let store = Store::open(&js, 1).await.map_err(store_error)?;
        match self {
            Credentials::Init(_) => Ok(()),
            Credentials::Create(create) => {
                let new = create.prepare()?;
                // The secret first: a stored credential whose secret was never written
                // would be one nobody can use but that still holds its name.
                write_secret(&new.out, &new.secret)?;
                if let Err(error) = store.create(&new.credential).await {
                    if new.out != Path::new("-") {
                        let _ = std::fs::remove_file(&new.out);
                    }
                    return Err(store_error(error));
                }
                let name = &new.credential.name;
                if new.out != Path::new("-") {
                    eprintln!(
                        "created credential {name}; its {} is in {} ({})",
                        new.how,
                        new.out.display(),
                        connect_hint(&new.credential.proof, &new.out)
                    );
                }
                Ok(())
            }
            Credentials::List(list) => {
                let credentials = store.list().await.map_err(store_error)?;
                if list.json {
                    return output::json(&credentials);
                }
                if credentials.is_empty() {
                    eprintln!("no credentials");
                    return Ok(());
                }
                let mut table =
                    output::table(&["NAME", "KIND", "SCOPE", "SECRET", "CREATED", "REVOKED"]);
                for credential in &credentials {
                    let (kind, scope) = describe(&credential.scope);
                    let secret = match &credential.proof {
                        Proof::Nkey { public_key } => {
                            format!("nkey {}", &public_key[..12.min(public_key.len())])
                        }
                        Proof::Token { .. } => "token".to_owned(),
                    };
                    table.add_row(vec![
                        credential.name.clone(),
                        kind.to_owned(),
                        scope,
                        secret,
                        output::ago(credential.created_at),
                        credential.revoked_at.map(output::ago).unwrap_or_default(),
                    ]);
                }
                println!("{table}");
                Ok(())
            }
            Credentials::Revoke(revoke) => {
                let credential = store.revoke(&revoke.name).await.map_err(store_error)?;
                if revoke.json {
                    return output::json(&credential);
                }
                eprintln!("revoked credential {}", credential.name);
                Ok(())
            }
        }
    }
}

impl Init {
    /// Writes the keys, the server configuration and, with `--tls`, a private CA.
    fn run(&self) -> Result<(), CliError> {
        if self.if_missing && self.dir.join(setup::SERVER_CONFIG_FILE).exists() {
            eprintln!("kept the keys in {}", self.dir.display());
            return Ok(());
        }
        let written = setup::init(&self.dir, &self.account)
            .map_err(|error| CliError::Usage(error.to_string()))?;
        eprintln!("wrote {}", written.issuer.display());
        eprintln!("wrote {}", written.services.display());
        eprintln!("wrote {}", written.server_config.display());
        if self.tls {
            let names: Vec<&str> = self.tls_names.iter().map(String::as_str).collect();
            let pki = drover_nats_connect::pki::generate(&self.dir.join("tls"), &names)
                .map_err(|error| CliError::Usage(error.to_string()))?;
            let block = self.dir.join("tls.conf");
            std::fs::write(&block, pki.server_block(true)).map_err(|error| {
                CliError::Other(format!("cannot write {}: {error}", block.display()))
            })?;
            eprintln!(
                "wrote {} (ca, server and client certificates)",
                self.dir.join("tls").display()
            );
            eprintln!("wrote {}", block.display());
        }
        let main = self.dir.join("nats.conf");
        let includes = if self.tls {
            "include auth.conf\ninclude tls.conf\n"
        } else {
            "include auth.conf\n"
        };
        let text = format!(
            "# The secured setup for nats-server (docs/security.md): `nats-server -c {} -js ...`,\n\
             # or include these files from a configuration of your own.\n{includes}",
            main.display()
        );
        std::fs::write(&main, text).map_err(|error| {
            CliError::Other(format!("cannot write {}: {error}", main.display()))
        })?;
        eprintln!("wrote {}", main.display());
        if let Some(owner) = self.owner {
            chown_all(&self.dir, owner)?;
        }
        eprintln!(
            "next: start nats-server with -c {}, drover-auth with \
             DROVER_AUTH_ISSUER_SEED={}, and the services with DROVER_NATS_NKEY={}",
            self.dir.join("nats.conf").display(),
            written.issuer.display(),
            written.services.display()
        );
        Ok(())
    }
}

impl Create {
    fn output(&self) -> &Output {
        match self {
            Create::Worker { output, .. }
            | Create::Pool { output, .. }
            | Create::Client { output, .. } => output,
        }
    }

    fn prepare(&self) -> Result<New, CliError> {
        let usage = |error: drover_protocol::InvalidId| CliError::Usage(error.to_string());
        let (scope, default_name, output, token) = match self {
            Create::Worker { worker_id, output } => {
                let worker_id = WorkerId::parse(worker_id.as_str()).map_err(usage)?;
                let name = worker_id.to_string();
                (Scope::Worker { worker_id }, name, output, false)
            }
            Create::Pool { pool_id, output } => {
                let pool_id = PoolId::parse(pool_id.as_str()).map_err(usage)?;
                let name = pool_id.to_string();
                (Scope::Pool { pool_id }, name, output, false)
            }
            Create::Client {
                client,
                role,
                secret,
                output,
            } => (
                Scope::Client { role: *role },
                client.clone(),
                output,
                *secret == Secret::Token,
            ),
        };
        let name = output.name.clone().unwrap_or(default_name);
        if WorkerId::parse(name.as_str()).is_err() {
            return Err(CliError::Usage(format!(
                "invalid credential name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
            )));
        }
        let (proof, secret, extension, how) = if token {
            let token = credential::new_token();
            let proof = Proof::Token {
                token_sha256: credential::token_sha256(&token),
            };
            (proof, token, "token", "token")
        } else {
            let key = KeyPair::new_user();
            let seed = key.seed().expect("a generated key has its seed");
            let proof = Proof::Nkey {
                public_key: key.public_key(),
            };
            (proof, seed, "nk", "nkey seed")
        };
        let out = output
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{name}.{extension}")));
        if out != Path::new("-") && out.exists() {
            return Err(CliError::Usage(format!(
                "{} already exists; secrets are never overwritten (choose --out)",
                out.display()
            )));
        }
        let credential = Credential::new(name, scope, proof);
        Ok(New {
            credential,
            secret,
            out,
            how,
        })
    }
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not UID:GID"))?;
    let number = |part: &str| {
        part.parse::<u32>()
            .map_err(|_| format!("{text:?} is not UID:GID (numbers)"))
    };
    Ok((number(uid)?, number(gid)?))
}

/// Gives `dir` and everything under it to `owner`.
fn chown_all(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), CliError> {
    let fail = |path: &Path, error: std::io::Error| {
        CliError::Other(format!(
            "cannot give {} to {uid}:{gid}: {error}",
            path.display()
        ))
    };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|error| fail(dir, error))?;
    let entries = std::fs::read_dir(dir).map_err(|error| fail(dir, error))?;
    for entry in entries {
        let path = entry.map_err(|error| fail(dir, error))?.path();
        if path.is_dir() {
            chown_all(&path, (uid, gid))?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|error| fail(&path, error))?;
        }
    }
    Ok(())
}

fn describe(scope: &Scope) -> (&'static str, String) {
    match scope {
        Scope::Worker { worker_id } => ("worker", worker_id.to_string()),
        Scope::Pool { pool_id } => ("pool", pool_id.to_string()),
        Scope::Client { role } => (
            "client",
            match role {
                ClientRole::Read => "read",
                ClientRole::Submit => "submit",
            }
            .to_owned(),
        ),
    }
}

fn connect_hint(proof: &Proof, out: &Path) -> String {
    match proof {
        Proof::Nkey { .. } => format!("connect with DROVER_NATS_NKEY={}", out.display()),
        Proof::Token { .. } => format!("connect with DROVER_NATS_TOKEN=$(cat {})", out.display()),
    }
}

fn write_secret(out: &Path, secret: &str) -> Result<(), CliError> {
    if out == Path::new("-") {
        println!("{secret}");
        return Ok(());
    }
    setup::write_secret(out, secret).map_err(|error| CliError::Other(error.to_string()))
}

fn store_error(error: credential::StoreError) -> CliError {
    use credential::StoreError;
    match error {
        StoreError::Exists(_) | StoreError::InvalidName(_) | StoreError::AlreadyRevoked(_) => {
            CliError::Usage(error.to_string())
        }
        StoreError::Unknown(_) => CliError::NotFound(error.to_string()),
        StoreError::Nats(_) | StoreError::Malformed { .. } => CliError::Unreachable(format!(
            "{error} (credentials need the services' key: --nkey services.nk)"
        )),
    }
}
