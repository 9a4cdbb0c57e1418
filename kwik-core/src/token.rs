//! Path tokens: the primary's authorisation for a client to join a
//! secondary server on behalf of one session.
//!
//! A token is an HMAC-SHA256 (ring) over the session id, the path id and an
//! expiry, under a key the primary shares with the secondaries it trusts.
//! The client never learns the key; it only carries the MAC from the primary
//! to the secondary. Because the MAC covers the session id the client claims,
//! a token minted for one session is worthless for another, and the
//! secondary's replay cache makes each token single-use.

use std::collections::BTreeMap;
use std::time::Duration;

use ring::hmac;

use crate::ids::SessionId;

/// A shared secret for minting (primary) or verifying (secondary) path tokens.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// A key from 32 secret bytes shared by a primary and its secondaries.
    pub fn new(secret: [u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &secret))
    }

    /// The token authorising path `path` of session `session` until
    /// `expiry_unix` (seconds since the Unix epoch). Primaries mint tokens
    /// themselves in `add_path`; this is for orchestration outside kwik and
    /// for tests.
    pub fn mint(&self, session: SessionId, path: crate::PathId, expiry_unix: u64) -> bytes::Bytes {
        let claims = TokenClaims {
            session_id: session,
            path_id: path.0,
            expiry_unix,
        };
        bytes::Bytes::from(mint(self, &claims))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// What a token vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    pub session_id: SessionId,
    pub path_id: u64,
    /// Seconds since the Unix epoch after which the token is void.
    pub expiry_unix: u64,
}

fn message(claims: &TokenClaims) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..8].copy_from_slice(b"kwikpath");
    m[8..24].copy_from_slice(&claims.session_id.0);
    m[24..32].copy_from_slice(&claims.path_id.to_be_bytes());
    m[32..40].copy_from_slice(&claims.expiry_unix.to_be_bytes());
    m
}

/// The MAC a primary hands the client for `claims`.
pub(crate) fn mint(key: &TokenKey, claims: &TokenClaims) -> Vec<u8> {
    hmac::sign(&key.0, &message(claims)).as_ref().to_vec()
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// No trusted key produced this MAC for these claims (forged, or minted
    /// for another session or path).
    BadMac,
    /// The expiry has passed.
    Expired,
    /// The token was already used.
    Replayed,
}

impl TokenRefusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TokenRefusal::BadMac => "path token does not verify for this session and path",
            TokenRefusal::Expired => "path token expired",
            TokenRefusal::Replayed => "path token already used",
        }
    }
}

/// A secondary's verifier: trusted keys plus the single-use record.
#[derive(Debug, Default)]
pub(crate) struct TokenVerifier {
    /// (session, path) → expiry of tokens already accepted.
    used: BTreeMap<(SessionId, u64), u64>,
}

impl TokenVerifier {
    pub(crate) fn verify(
        &mut self,
        keys: &[TokenKey],
        claims: &TokenClaims,
        mac: &[u8],
        now_unix: Duration,
    ) -> Result<(), TokenRefusal> {
        let msg = message(claims);
        if !keys.iter().any(|k| hmac::verify(&k.0, &msg, mac).is_ok()) {
            return Err(TokenRefusal::BadMac);
        }
        let now = now_unix.as_secs();
        if claims.expiry_unix <= now {
            return Err(TokenRefusal::Expired);
        }
        self.used.retain(|_, &mut expiry| expiry > now);
        if self
            .used
            .insert((claims.session_id, claims.path_id), claims.expiry_unix)
            .is_some()
        {
            return Err(TokenRefusal::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(session: u8, path: u64, expiry: u64) -> TokenClaims {
        TokenClaims {
            session_id: SessionId([session; 16]),
            path_id: path,
            expiry_unix: expiry,
        }
    }

    #[test]
    fn tokens_verify_once_for_their_session_until_expiry() {
        let key = TokenKey::new([1; 32]);
        let other = TokenKey::new([2; 32]);
        let now = Duration::from_secs(1000);
        let mut v = TokenVerifier::default();
        let c = claims(7, 1, 1060);
        let mac = mint(&key, &c);
        assert_eq!(
            v.verify(std::slice::from_ref(&other), &c, &mac, now),
            Err(TokenRefusal::BadMac)
        );
        assert_eq!(
            v.verify(std::slice::from_ref(&key), &claims(8, 1, 1060), &mac, now),
            Err(TokenRefusal::BadMac)
        );
        assert_eq!(
            v.verify(std::slice::from_ref(&key), &claims(7, 2, 1060), &mac, now),
            Err(TokenRefusal::BadMac)
        );
        assert_eq!(v.verify(&[other, key.clone()], &c, &mac, now), Ok(()));
        assert_eq!(
            v.verify(std::slice::from_ref(&key), &c, &mac, now),
            Err(TokenRefusal::Replayed)
        );
        let late = claims(7, 3, 1000);
        let mac = mint(&key, &late);
        assert_eq!(
            v.verify(&[key], &late, &mac, now),
            Err(TokenRefusal::Expired)
        );
    }
}
