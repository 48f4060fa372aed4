//! Authentication: Asleep's API key on the webhook and signed viewer tokens
//! on the pages, the API and the WebSocket.
//!
//! A viewer token is `v1.<expiry>.<mac>`: the expiry in Unix seconds and an
//! HMAC-SHA256, keyed by `DASHBOARD_SECRET`, over the user id and the expiry.
//! It grants read access to one user's nights until it expires.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const TOKEN_VERSION: &str = "v1";

/// Reason a viewer token was rejected. The messages never repeat the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a viewer token is required: open the link printed by `sleep-dashboard link`")]
    Missing,
    #[error("the viewer token is malformed")]
    Malformed,
    #[error("the viewer token expired; ask for a new link")]
    Expired,
    #[error("the viewer token is not valid for this user")]
    BadSignature,
}

/// Signs and checks viewer tokens.
#[derive(Clone)]
pub struct ViewerKeys {
    secret: Vec<u8>,
}

impl ViewerKeys {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// Issues a token for `user_id` that expires at `expires_at` (Unix seconds).
    pub fn issue(&self, user_id: &str, expires_at: i64) -> String {
        let mac = self.mac(user_id, expires_at).finalize().into_bytes();
        format!("{TOKEN_VERSION}.{expires_at}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Checks that `token` grants access to `user_id` at time `now` and
    /// returns its expiry, both in Unix seconds.
    pub fn verify(&self, token: &str, user_id: &str, now: i64) -> Result<i64, TokenError> {
        let mut parts = token.split('.');
        let (Some(TOKEN_VERSION), Some(expiry), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires_at: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;

        // The signature is checked before the expiry, so a forged token learns
        // nothing from which error it gets.
        self.mac(user_id, expires_at)
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(expires_at)
    }

    fn mac(&self, user_id: &str, expires_at: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        // The length prefix keeps "ab" + "1" and "a" + "b1" apart.
        mac.update(TOKEN_VERSION.as_bytes());
        mac.update(&(user_id.len() as u64).to_be_bytes());
        mac.update(user_id.as_bytes());
        mac.update(&expires_at.to_be_bytes());
        mac
    }
}

/// Compares a presented API key with the configured ones in constant time.
/// Every configured key is compared, so the time taken does not reveal which
/// key, if any, nearly matched.
pub fn api_key_matches(presented: &[u8], configured: &[String]) -> bool {
    configured
        .iter()
        .fold(subtle::Choice::from(0), |found, key| {
            found | key.as_bytes().ct_eq(presented)
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_scope() {
        let keys = ViewerKeys::new("secret");
        let token = keys.issue("alice", 2_000);
        assert_eq!(keys.verify(&token, "alice", 1_000), Ok(2_000));
        assert_eq!(keys.verify(&token, "bob", 1_000), Err(TokenError::BadSignature));
        assert_eq!(keys.verify(&token, "alice", 2_000), Err(TokenError::Expired));
        assert_eq!(
            ViewerKeys::new("other").verify(&token, "alice", 1_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_tokens_are_rejected() {
        let keys = ViewerKeys::new("secret");
        let token = keys.issue("alice", 2_000);
        let extended = token.replace("2000", "9000");
        assert_eq!(keys.verify(&extended, "alice", 1_000), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("v1.2000", "alice", 1_000), Err(TokenError::Malformed));
        assert_eq!(keys.verify("v1.x.abc", "alice", 1_000), Err(TokenError::Malformed));
        assert_eq!(keys.verify("", "alice", 1_000), Err(TokenError::Malformed));
    }

    #[test]
    fn api_key_comparison() {
        let keys = vec!["first".to_string(), "second".to_string()];
        assert!(api_key_matches(b"second", &keys));
        assert!(!api_key_matches(b"secon", &keys));
        assert!(!api_key_matches(b"", &keys));
    }
}
