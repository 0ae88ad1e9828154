//! NATS JWTs: the `ed25519-nkey` profile that nats-server reads and writes.
//!
//! A token is `base64url(header).base64url(claims).base64url(signature)`, unpadded, signed
//! with an nkey. Only what the auth callout needs is here: reading the server's
//! authorization request and writing a user claim wrapped in an authorization response.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Why a token could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three dot-separated base64url parts.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The claims are not the JSON expected.
    #[error("malformed claims: {0}")]
    Claims(#[from] serde_json::Error),
    /// The signature does not verify against the issuer.
    #[error("bad signature from {issuer}")]
    Signature {
        /// The issuer the claims name.
        issuer: String,
    },
    /// Signing failed (a key without its seed).
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The fields every claim set has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims<N> {
    /// Unique id: a hash of the claims.
    #[serde(default)]
    pub jti: String,
    /// Issued at, in seconds since the epoch.
    #[serde(default)]
    pub iat: i64,
    /// The public key that signed the token.
    pub iss: String,
    /// The public key the claims are about.
    pub sub: String,
    /// Who the token is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The NATS-specific claims.
    pub nats: N,
}

/// Signs `claims` with `signer`, filling in `iss`, `iat` and `jti`.
pub fn encode<N: Serialize>(mut claims: Claims<N>, signer: &KeyPair) -> Result<String, JwtError> {
    claims.iss = signer.public_key();
    claims.iat = time::OffsetDateTime::now_utc().unix_timestamp();
    claims.jti = String::new();
    let unsigned = serde_json::to_vec(&claims)?;
    claims.jti = BASE32_NOPAD.encode(&Sha512_256::digest(&unsigned));
    let body = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims)?)
    );
    let signature = signer
        .sign(body.as_bytes())
        .map_err(|error| JwtError::Sign(error.to_string()))?;
    Ok(format!("{body}.{}", BASE64URL_NOPAD.encode(&signature)))
}

/// Reads a token and checks that its issuer signed it.
pub fn decode<N: DeserializeOwned>(token: &str) -> Result<Claims<N>, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    let decode_part = |part: &str| {
        BASE64URL_NOPAD
            .decode(part.trim_end_matches('=').as_bytes())
            .map_err(|_| JwtError::Malformed("a part is not base64url"))
    };
    let signature = decode_part(signature)?;
    let header_json: serde_json::Value = serde_json::from_slice(&decode_part(header)?)?;
    if header_json["alg"].as_str() != Some("ed25519-nkey") {
        return Err(JwtError::Malformed("not an ed25519-nkey token"));
    }
    let claims: Claims<N> = serde_json::from_slice(&decode_part(claims)?)?;
    let issuer = KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::Malformed("the issuer is not a public nkey"))?;
    let signed = token
        .trim()
        .rsplit_once('.')
        .map(|(body, _)| body)
        .unwrap_or_default();
    issuer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature {
            issuer: claims.iss.clone(),
        })?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    struct Body {
        kind: String,
    }

    fn claims(sub: &str) -> Claims<Body> {
        Claims {
            jti: String::new(),
            iat: 0,
            iss: String::new(),
            sub: sub.to_owned(),
            aud: "DROVER".to_owned(),
            name: String::new(),
            nats: Body {
                kind: "user".to_owned(),
            },
        }
    }

    #[test]
    fn a_signed_token_reads_back_with_its_issuer_and_id() {
        let account = KeyPair::new_account();
        let token = encode(claims("UABC"), &account).expect("signs");
        let read: Claims<Body> = decode(&token).expect("verifies");
        assert_eq!(read.iss, account.public_key());
        assert_eq!(read.sub, "UABC");
        assert_eq!(read.aud, "DROVER");
        assert_eq!(read.jti.len(), 52, "base32 of a 32-byte hash: {}", read.jti);
        assert!(read.iat > 1_700_000_000);
    }

    #[test]
    fn a_changed_claim_breaks_the_signature() {
        let account = KeyPair::new_account();
        let token = encode(claims("UABC"), &account).expect("signs");
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
            .unwrap()
            .replace("UABC", "UXYZ");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            BASE64URL_NOPAD.encode(forged_claims.as_bytes()),
            parts[2]
        );
        assert!(matches!(
            decode::<Body>(&forged),
            Err(JwtError::Signature { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for token in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(decode::<Body>(token).is_err(), "{token}");
        }
    }
}
