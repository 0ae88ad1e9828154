//! Who may act. The console is read-only unless it was given a token; then whoever presents
//! the token, as a bearer token or through the cookie that signing in sets, may cancel,
//! submit, re-submit, scale and restart.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::ConsoleError;

/// The cookie that carries a signed-in browser's proof of the token.
pub const COOKIE_NAME: &str = "drover_console";

/// The console's token, kept only as its digest.
#[derive(Clone)]
pub struct Access {
    digest: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("actions", &self.digest.is_some())
            .finish()
    }
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Compares without stopping at the first difference, so that timing tells nothing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Access {
    /// Actions for whoever presents `token`; none when it is `None`.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            digest: token.map(digest),
        }
    }

    /// Whether the console takes actions at all.
    pub fn actions_enabled(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether `token` is the console's.
    pub fn accepts(&self, token: &str) -> bool {
        self.digest
            .as_deref()
            .is_some_and(|expected| same(expected, &digest(token)))
    }

    /// The cookie value that proves `token`, once it is accepted.
    pub fn cookie_value(&self, token: &str) -> Option<String> {
        self.accepts(token).then(|| digest(token))
    }

    /// Whether the request carries the token or the signed-in cookie.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = self.digest.as_deref() else {
            return false;
        };
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| value.strip_prefix("Bearer "))
            .any(|token| same(expected, &digest(token.trim())));
        bearer
            || headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(name, value)| name == COOKIE_NAME && same(expected, value))
    }

    /// Why a request without the right may not act.
    pub fn refusal(&self) -> ConsoleError {
        if self.actions_enabled() {
            ConsoleError::not_permitted(
                "this action needs the console's token: send it as `Authorization: Bearer \
                 <token>`, or sign in",
            )
        } else {
            ConsoleError::not_permitted(
                "this console is read-only: start drover-console with --token (or \
                 DROVER_CONSOLE_TOKEN) to allow actions",
            )
        }
    }
}

/// Proof, for a handler, that the request may act.
#[derive(Debug, Clone, Copy)]
pub struct Actor;

impl FromRequestParts<crate::AppState> for Actor {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.access.allows(&parts.headers) {
            Ok(Actor)
        } else {
            Err(state.access.refusal())
        }
    }
}

/// Whether the request may act, for pages that show or hide their buttons.
#[derive(Debug, Clone, Copy)]
pub struct CanAct(pub bool);

impl FromRequestParts<crate::AppState> for CanAct {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(CanAct(state.access.allows(&parts.headers)))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_token_or_its_cookie_allows_and_nothing_else_does() {
        let access = Access::new(Some("s3cret-token"));
        assert!(access.allows(&headers(&[("authorization", "Bearer s3cret-token")])));
        let cookie = access.cookie_value("s3cret-token").unwrap();
        assert!(access.allows(&headers(&[(
            "cookie",
            &format!("a=b; {COOKIE_NAME}={cookie}")
        )])));
        assert!(!access.allows(&headers(&[("authorization", "Bearer s3cret-tokeN")])));
        assert!(!access.allows(&headers(&[(
            "cookie",
            &format!("{COOKIE_NAME}=s3cret-token")
        )])));
        assert!(!access.allows(&headers(&[])));
        assert_eq!(access.cookie_value("wrong"), None);
    }

    #[test]
    fn without_a_token_nobody_may_act() {
        let access = Access::new(None);
        assert!(!access.actions_enabled());
        assert!(!access.allows(&headers(&[("authorization", "Bearer ")])));
        assert!(access.refusal().message.contains("read-only"));
    }
}
