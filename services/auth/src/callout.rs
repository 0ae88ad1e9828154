//! The auth callout: nats-server asks, for every connection that is not a service's, who
//! it is; the answer is a user JWT with that credential's permissions, or a refusal.
//!
//! The decision itself ([`decide`]) does no I/O: it is given the request and the
//! credential found for it, and is tested as such.

use data_encoding::{BASE64, BASE64URL, BASE64URL_NOPAD};
use drover_protocol::grants::Grants;
use nkeys::{KeyPair, XKey};
use serde::{Deserialize, Serialize};

use crate::credential::{token_sha256, Credential, Proof};
use crate::jwt::{self, Claims, JwtError};

/// The subject nats-server sends authorization requests to.
pub const SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// The header in which nats-server names its own curve key when it encrypts a request to
/// the callout's `xkey`; the answer is then sealed back to that key.
pub const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";

/// Why an encrypted request could not be opened, or its answer sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The header does not hold a public curve key.
    #[error("the server's key {0:?} is not a public xkey")]
    ServerKey(String),
    /// Not sealed to this service's xkey (or damaged).
    #[error(
        "cannot open the request ({0}); is the callout's xkey the one derived from this issuer?"
    )]
    Open(String),
    /// Sealing failed.
    #[error("cannot seal the answer: {0}")]
    Seal(String),
}

fn server_xkey(server: &str) -> Result<XKey, SealError> {
    XKey::from_public_key(server).map_err(|_| SealError::ServerKey(server.to_owned()))
}

/// Opens a request the server at `server` (its public xkey) sealed to `ours`.
pub fn open_request(payload: &[u8], server: &str, ours: &XKey) -> Result<Vec<u8>, SealError> {
    ours.open(payload, &server_xkey(server)?)
        .map_err(|error| SealError::Open(error.to_string()))
}

/// Seals `answer` from `ours` to the server at `server`.
pub fn seal_answer(answer: &str, server: &str, ours: &XKey) -> Result<Vec<u8>, SealError> {
    ours.seal(answer.as_bytes(), &server_xkey(server)?)
        .map_err(|error| SealError::Seal(error.to_string()))
}

/// The NATS part of an authorization request (what the client presented, and where).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthRequest {
    /// The server asking.
    #[serde(default)]
    pub server_id: ServerId,
    /// The key the user JWT must be issued to.
    pub user_nkey: String,
    /// About the connection.
    #[serde(default)]
    pub client_info: ClientInfo,
    /// What the client sent in CONNECT.
    #[serde(default)]
    pub connect_opts: ConnectOpts,
}

/// The server that asks.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerId {
    /// Its id: the audience of the answer.
    #[serde(default)]
    pub id: String,
}

/// About the connection.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientInfo {
    /// The nonce the server sent to the client, which an nkey client signs.
    #[serde(default)]
    pub nonce: String,
    /// The client's address.
    #[serde(default)]
    pub host: String,
}

/// The credentials in CONNECT.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectOpts {
    /// A public user nkey.
    #[serde(default)]
    pub nkey: Option<String>,
    /// The nonce signed with that nkey's seed.
    #[serde(default)]
    pub sig: Option<String>,
    /// A token.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The connection's name (a pool process's workerID).
    #[serde(default)]
    pub name: Option<String>,
}

/// What the client proved, read off the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A valid nonce signature by this key, or a token (hashed).
    Proof(Proof),
    /// Nothing usable.
    Nothing(&'static str),
}

/// Reads and checks what the client presented: a signed nonce wins over a token.
pub fn presented(request: &AuthRequest) -> Presented {
    let opts = &request.connect_opts;
    if let Some(public_key) = opts.nkey.as_deref().filter(|key| !key.is_empty()) {
        let Ok(key) = KeyPair::from_public_key(public_key) else {
            return Presented::Nothing("the nkey is not a public user key");
        };
        let Some(signature) = opts.sig.as_deref().and_then(decode_signature) else {
            return Presented::Nothing("the nonce signature is missing or malformed");
        };
        if request.client_info.nonce.is_empty()
            || key
                .verify(request.client_info.nonce.as_bytes(), &signature)
                .is_err()
        {
            return Presented::Nothing("the nonce signature does not verify");
        }
        return Presented::Proof(Proof::Nkey {
            public_key: public_key.to_owned(),
        });
    }
    match opts.auth_token.as_deref().filter(|token| !token.is_empty()) {
        Some(token) => Presented::Proof(Proof::Token {
            token_sha256: token_sha256(token),
        }),
        None => Presented::Nothing("no nkey and no token"),
    }
}

/// Clients encode the signature as base64url (Go, Rust) or standard base64 (Python).
fn decode_signature(text: &str) -> Option<Vec<u8>> {
    [&BASE64URL_NOPAD, &BASE64URL, &BASE64]
        .iter()
        .find_map(|encoding| encoding.decode(text.as_bytes()).ok())
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit with these permissions, under this name.
    Admit {
        /// The credential's name.
        name: String,
        /// What it may do.
        grants: Grants,
    },
    /// Refuse, for this reason (logged, and sent to the server).
    Refuse(String),
}

/// Decides on a request, given the live credential found for what it presented.
pub fn decide(request: &AuthRequest, found: Option<&Credential>) -> Decision {
    match (presented(request), found) {
        (Presented::Nothing(why), _) => Decision::Refuse(why.to_owned()),
        (Presented::Proof(_), None) => Decision::Refuse("unknown or revoked credential".to_owned()),
        (Presented::Proof(proof), Some(credential)) if credential.proof != proof => {
            Decision::Refuse("credential mismatch".to_owned())
        }
        (Presented::Proof(_), Some(credential)) => Decision::Admit {
            name: credential.name.clone(),
            grants: credential.grants(request.connect_opts.name.as_deref()),
        },
    }
}

#[derive(Debug, Serialize)]
struct UserNats {
    #[serde(rename = "pub")]
    publish: Permission,
    #[serde(rename = "sub")]
    subscribe: Permission,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp: Option<Responses>,
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Debug, Serialize)]
struct Permission {
    allow: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Responses {
    max: i64,
    ttl: i64,
}

#[derive(Debug, Serialize)]
struct ResponseNats {
    jwt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

/// Reads a request token from the server, checking the server's signature.
pub fn read_request(token: &[u8]) -> Result<AuthRequest, JwtError> {
    let text = std::str::from_utf8(token).map_err(|_| JwtError::Malformed("not UTF-8"))?;
    Ok(jwt::decode::<AuthRequest>(text)?.nats)
}

/// The signed answer to `request`: a user JWT placed in `account`, or the refusal.
pub fn answer(
    request: &AuthRequest,
    decision: &Decision,
    account: &str,
    issuer: &KeyPair,
) -> Result<String, JwtError> {
    let (user_jwt, error) = match decision {
        Decision::Admit { name, grants } => {
            let user = Claims {
                jti: String::new(),
                iat: 0,
                iss: String::new(),
                sub: request.user_nkey.clone(),
                aud: account.to_owned(),
                name: name.clone(),
                nats: UserNats {
                    publish: Permission {
                        allow: grants.publish.clone(),
                    },
                    subscribe: Permission {
                        allow: grants.subscribe.clone(),
                    },
                    resp: grants.respond.then_some(Responses { max: 1, ttl: 0 }),
                    subs: -1,
                    data: -1,
                    payload: -1,
                    kind: "user",
                    version: 2,
                },
            };
            (jwt::encode(user, issuer)?, String::new())
        }
        Decision::Refuse(why) => (String::new(), why.clone()),
    };
    let response = Claims {
        jti: String::new(),
        iat: 0,
        iss: String::new(),
        sub: request.user_nkey.clone(),
        aud: request.server_id.id.clone(),
        name: String::new(),
        nats: ResponseNats {
            jwt: user_jwt,
            error,
            kind: "authorization_response",
            version: 2,
        },
    };
    jwt::encode(response, issuer)
}

#[cfg(test)]
mod tests {
    use drover_protocol::{Timestamp, WorkerId};

    use super::*;
    use crate::credential::Scope;

    fn request_signed_by(key: &KeyPair, nonce: &str) -> AuthRequest {
        let signature = key.sign(nonce.as_bytes()).unwrap();
        AuthRequest {
            server_id: ServerId {
                id: "NSERVER".to_owned(),
            },
            user_nkey: KeyPair::new_user().public_key(),
            client_info: ClientInfo {
                nonce: nonce.to_owned(),
                host: "127.0.0.1".to_owned(),
            },
            connect_opts: ConnectOpts {
                nkey: Some(key.public_key()),
                sig: Some(BASE64URL_NOPAD.encode(&signature)),
                ..Default::default()
            },
        }
    }

    fn worker_credential(key: &KeyPair, worker: &str) -> Credential {
        Credential {
            name: worker.to_owned(),
            scope: Scope::Worker {
                worker_id: WorkerId::parse(worker).unwrap(),
            },
            proof: Proof::Nkey {
                public_key: key.public_key(),
            },
            created_at: Timestamp::from_millis(0),
            revoked_at: None,
        }
    }

    #[test]
    fn a_signed_nonce_admits_the_worker_with_its_own_grants() {
        let key = KeyPair::new_user();
        let request = request_signed_by(&key, "abc123");
        let credential = worker_credential(&key, "w-a");
        let Decision::Admit { name, grants } = decide(&request, Some(&credential)) else {
            panic!("refused");
        };
        assert_eq!(name, "w-a");
        assert!(grants
            .publish
            .contains(&"v1.routine.completed.w-a".to_owned()));
    }

    #[test]
    fn python_style_padded_base64_signatures_verify_too() {
        let key = KeyPair::new_user();
        let mut request = request_signed_by(&key, "n0nce");
        let signature = key.sign(b"n0nce").unwrap();
        request.connect_opts.sig = Some(BASE64.encode(&signature));
        assert!(matches!(presented(&request), Presented::Proof(_)));
    }

    #[test]
    fn a_signature_over_another_nonce_or_by_another_key_is_refused() {
        let key = KeyPair::new_user();
        let mut replayed = request_signed_by(&key, "old");
        replayed.client_info.nonce = "new".to_owned();
        assert!(matches!(presented(&replayed), Presented::Nothing(_)));

        let thief = KeyPair::new_user();
        let mut stolen_name = request_signed_by(&thief, "n");
        stolen_name.connect_opts.nkey = Some(key.public_key());
        assert!(matches!(presented(&stolen_name), Presented::Nothing(_)));
    }

    #[test]
    fn an_unknown_key_or_no_credentials_is_refused() {
        let key = KeyPair::new_user();
        let request = request_signed_by(&key, "n");
        assert!(matches!(decide(&request, None), Decision::Refuse(_)));
        let bare = AuthRequest::default();
        assert!(matches!(decide(&bare, None), Decision::Refuse(_)));
    }

    #[test]
    fn a_token_is_looked_up_by_its_hash() {
        let mut request = AuthRequest::default();
        request.connect_opts.auth_token = Some("secret".to_owned());
        assert_eq!(
            presented(&request),
            Presented::Proof(Proof::Token {
                token_sha256: token_sha256("secret")
            })
        );
    }

    #[test]
    fn a_sealed_request_opens_with_our_xkey_only_and_the_answer_opens_at_the_server() {
        let server = XKey::new();
        let ours = XKey::new();
        let sealed = server.seal(b"request", &ours).unwrap();
        let opened = open_request(&sealed, &server.public_key(), &ours).unwrap();
        assert_eq!(opened, b"request");
        assert!(matches!(
            open_request(&sealed, &server.public_key(), &XKey::new()),
            Err(SealError::Open(_))
        ));
        assert!(matches!(
            open_request(&sealed, "not a key", &ours),
            Err(SealError::ServerKey(_))
        ));
        let answer = seal_answer("eyJ.answer", &server.public_key(), &ours).unwrap();
        assert!(answer.starts_with(b"xkv1"));
        let from_ours = XKey::from_public_key(&ours.public_key()).unwrap();
        assert_eq!(server.open(&answer, &from_ours).unwrap(), b"eyJ.answer");
    }

    #[test]
    fn the_answer_carries_a_user_jwt_for_the_requested_key_in_the_account() {
        let key = KeyPair::new_user();
        let issuer = KeyPair::new_account();
        let request = request_signed_by(&key, "n");
        let decision = decide(&request, Some(&worker_credential(&key, "w-a")));
        let token = answer(&request, &decision, "DROVER", &issuer).unwrap();
        let response: Claims<serde_json::Value> = jwt::decode(&token).unwrap();
        assert_eq!(response.aud, "NSERVER");
        assert_eq!(response.sub, request.user_nkey);
        assert_eq!(response.nats["type"], "authorization_response");
        let user: Claims<serde_json::Value> =
            jwt::decode(response.nats["jwt"].as_str().unwrap()).unwrap();
        assert_eq!(user.iss, issuer.public_key());
        assert_eq!(user.aud, "DROVER");
        assert_eq!(user.sub, request.user_nkey);
        assert_eq!(user.nats["sub"]["allow"][0], "v1.worker.w-a.>");
        assert_eq!(user.nats["subs"], -1);
    }
}

#[cfg(test)]
mod documented {
    use drover_protocol::grants;
    use drover_protocol::{PoolId, WorkerId};

    /// docs/security.md's table of roles names every subject the grants give.
    #[test]
    fn every_granted_subject_is_in_the_roles_table() {
        let doc = include_str!("../../../docs/security.md");
        let table: String = doc
            .lines()
            .skip_while(|line| !line.starts_with("| role |"))
            .take_while(|line| line.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!table.is_empty(), "docs/security.md has no roles table");
        let worker = grants::worker(&WorkerId::parse("w").unwrap());
        let pool = grants::pool(&PoolId::parse("p").unwrap());
        let all = [worker, grants::client_read(), grants::client_submit(), pool];
        for grant in &all {
            for subject in grant.publish.iter().chain(&grant.subscribe) {
                let written = subject.replace(".w.", ".<w>.").replace(".p.", ".<p>.");
                let written = match written.strip_suffix(".w") {
                    Some(stem) => format!("{stem}.<w>"),
                    None => written,
                };
                assert!(
                    table.contains(&format!("`{written}`")),
                    "{written} is granted but not in docs/security.md's roles table"
                );
            }
        }
    }
}
