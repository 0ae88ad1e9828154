//! Credentials: who a key or token belongs to, kept in the KV bucket `DROVER_CREDENTIALS`.
//!
//! Each credential is stored twice: its record under `name.<name>` (created atomically, so
//! names are unique) and an index entry `id.<key or token hash>` naming it. The auth
//! service reads both at every connection, so a revocation holds from the next one on.
//! Only public keys and token hashes are stored: the secret stays with its owner.

use async_nats::jetstream::{self, kv};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use drover_protocol::grants::{self, Grants};
use drover_protocol::{PoolId, Timestamp, WorkerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The bucket that holds the credentials.
pub const BUCKET: &str = "DROVER_CREDENTIALS";

/// What a credential lets its holder be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Scope {
    /// One worker, acting only as itself.
    #[serde(rename_all = "camelCase")]
    Worker {
        /// The workerID it may act as.
        #[serde(rename = "workerID")]
        worker_id: WorkerId,
    },
    /// A pool and the processes it starts (`<poolID>-<group>-<n>`).
    #[serde(rename_all = "camelCase")]
    Pool {
        /// The pool it may run.
        #[serde(rename = "poolID")]
        pool_id: PoolId,
    },
    /// A client.
    Client {
        /// What the client may do.
        role: ClientRole,
    },
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum ClientRole {
    /// Queries and watches only (dashboards).
    Read,
    /// Queries, watches, submit and cancel.
    Submit,
}

/// How the holder proves it holds the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "secret", rename_all = "camelCase")]
pub enum Proof {
    /// An Ed25519 nkey: the holder signs the server's nonce with its seed.
    #[serde(rename_all = "camelCase")]
    Nkey {
        /// The public user nkey (`U...`).
        public_key: String,
    },
    /// A bearer token, stored as its SHA-256.
    #[serde(rename_all = "camelCase")]
    Token {
        /// Lowercase hex SHA-256 of the token.
        token_sha256: String,
    },
}

impl Proof {
    /// The index key that finds the credential from what a client presents.
    fn index_key(&self) -> String {
        match self {
            Proof::Nkey { public_key } => format!("id.{public_key}"),
            Proof::Token { token_sha256 } => format!("id.{token_sha256}"),
        }
    }
}

/// A stored credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Its unique name (workerID rules).
    pub name: String,
    /// What it grants.
    #[serde(flatten)]
    pub scope: Scope,
    /// How it is proven.
    #[serde(flatten)]
    pub proof: Proof,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

impl Credential {
    /// A credential created now, not revoked.
    pub fn new(name: impl Into<String>, scope: Scope, proof: Proof) -> Self {
        Self {
            name: name.into(),
            scope,
            proof,
            created_at: Timestamp::now(),
            revoked_at: None,
        }
    }

    /// The permissions of a connection made with this credential. `connection_name` picks
    /// the worker among a pool's processes; any other name is the pool itself.
    pub fn grants(&self, connection_name: Option<&str>) -> Grants {
        match &self.scope {
            Scope::Worker { worker_id } => grants::worker(worker_id),
            Scope::Pool { pool_id } => connection_name
                .and_then(|name| WorkerId::parse(name).ok())
                .filter(|worker| grants::is_pool_process(pool_id, worker))
                .map(|worker| grants::worker(&worker))
                .unwrap_or_else(|| grants::pool(pool_id)),
            Scope::Client {
                role: ClientRole::Read,
            } => grants::client_read(),
            Scope::Client {
                role: ClientRole::Submit,
            } => grants::client_submit(),
        }
    }
}

/// Lowercase hex SHA-256 of a token, as stored.
pub fn token_sha256(token: &str) -> String {
    HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes, base64url.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("drover_{}", BASE64URL_NOPAD.encode(&bytes))
}

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is taken (revoked credentials keep their names).
    #[error("a credential named {0:?} already exists")]
    Exists(String),
    /// No credential has that name.
    #[error("no credential is named {0:?}")]
    Unknown(String),
    /// It was already revoked.
    #[error("credential {0:?} was already revoked")]
    AlreadyRevoked(String),
    /// The name breaks the workerID rules.
    #[error("invalid credential name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// NATS or JetStream failed.
    #[error("credential store: {0}")]
    Nats(String),
    /// A stored record is not a credential.
    #[error("credential store: malformed record {key}: {error}")]
    Malformed {
        /// The key read.
        key: String,
        /// Why it did not decode.
        error: serde_json::Error,
    },
}

fn nats(error: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(error.to_string())
}

/// The credentials bucket.
#[derive(Debug, Clone)]
pub struct Store {
    kv: kv::Store,
}

impl Store {
    /// Opens the bucket, creating it when missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    history: 5,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        Ok(Self { kv })
    }

    /// Stores a new credential; fails if the name is taken.
    pub async fn create(&self, credential: &Credential) -> Result<(), StoreError> {
        if WorkerId::parse(credential.name.as_str()).is_err() {
            return Err(StoreError::InvalidName(credential.name.clone()));
        }
        let record = serde_json::to_vec(credential).expect("a credential serialises");
        // The index first: a record without its index entry would be an unusable name.
        self.kv
            .put(credential.proof.index_key(), credential.name.clone().into())
            .await
            .map_err(nats)?;
        match self
            .kv
            .create(format!("name.{}", credential.name), record.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::Exists(credential.name.clone()))
            }
            Err(error) => Err(nats(error)),
        }
    }

    /// Every credential, by name.
    pub async fn list(&self) -> Result<Vec<Credential>, StoreError> {
        use futures::TryStreamExt;
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(nats)?,
            Err(error) => return Err(nats(error)),
        };
        let mut credentials = Vec::new();
        for key in keys.iter().filter(|key| key.starts_with("name.")) {
            if let Some((credential, _)) = self.read(key).await? {
                credentials.push(credential);
            }
        }
        credentials.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(credentials)
    }

    /// Marks a credential revoked: its holder cannot connect from then on.
    pub async fn revoke(&self, name: &str) -> Result<Credential, StoreError> {
        let key = format!("name.{name}");
        loop {
            let (mut credential, revision) = self
                .read(&key)
                .await?
                .ok_or_else(|| StoreError::Unknown(name.to_owned()))?;
            if credential.revoked_at.is_some() {
                return Err(StoreError::AlreadyRevoked(name.to_owned()));
            }
            credential.revoked_at = Some(Timestamp::now());
            let record = serde_json::to_vec(&credential).expect("a credential serialises");
            match self.kv.update(&key, record.into(), revision).await {
                Ok(_) => return Ok(credential),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(nats(error)),
            }
        }
    }

    /// The live (not revoked) credential proven by `proof`, if there is one.
    pub async fn find(&self, proof: &Proof) -> Result<Option<Credential>, StoreError> {
        let Some(name) = self.kv.get(proof.index_key()).await.map_err(nats)? else {
            return Ok(None);
        };
        let name = String::from_utf8_lossy(&name).into_owned();
        let found = self.read(&format!("name.{name}")).await?;
        Ok(found
            .map(|(credential, _)| credential)
            .filter(|credential| credential.revoked_at.is_none() && &credential.proof == proof))
    }

    async fn read(&self, key: &str) -> Result<Option<(Credential, u64)>, StoreError> {
        let Some(entry) = self.kv.entry(key).await.map_err(nats)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        serde_json::from_slice(&entry.value)
            .map(|credential| Some((credential, entry.revision)))
            .map_err(|error| StoreError::Malformed {
                key: key.to_owned(),
                error,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_flat_camel_case_json() {
        let credential = Credential {
            name: "resizer-1".to_owned(),
            scope: Scope::Worker {
                worker_id: WorkerId::parse("resizer-1").unwrap(),
            },
            proof: Proof::Nkey {
                public_key: "UABC".to_owned(),
            },
            created_at: Timestamp::from_millis(0),
            revoked_at: None,
        };
        let json = serde_json::to_value(&credential).unwrap();
        assert_eq!(json["kind"], "worker");
        assert_eq!(json["workerID"], "resizer-1");
        assert_eq!(json["secret"], "nkey");
        assert_eq!(json["publicKey"], "UABC");
        assert!(json.get("revokedAt").is_none());
        let back: Credential = serde_json::from_value(json).unwrap();
        assert_eq!(back, credential);
    }

    #[test]
    fn a_pool_credential_gives_its_processes_their_own_worker_rights() {
        let credential = Credential {
            name: "web".to_owned(),
            scope: Scope::Pool {
                pool_id: PoolId::parse("web").unwrap(),
            },
            proof: Proof::Token {
                token_sha256: token_sha256("t"),
            },
            created_at: Timestamp::from_millis(0),
            revoked_at: None,
        };
        let process = credential.grants(Some("web-api-3"));
        assert!(process
            .publish
            .contains(&"v1.routine.completed.web-api-3".to_owned()));
        let itself = credential.grants(Some("drover-pool web"));
        assert!(itself.subscribe.contains(&"v1.pool.web.>".to_owned()));
        let stranger = credential.grants(Some("other-api-3"));
        assert_eq!(stranger, itself);
    }

    #[test]
    fn tokens_are_random_and_stored_as_hashes() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(token_sha256(&a).len(), 64);
        assert_ne!(token_sha256(&a), token_sha256(&b));
    }
}
