//! Path tokens: the primary's authorisation for a client to join a
//! secondary server on behalf of one session.
//!
//! A token is an HMAC-SHA256 (ring) over the session id, the path id, an
//! expiry and the secondary it names (the address and server name the primary
//! put in its AddPath), under a key the primary shares with the secondaries
//! it trusts. The client never learns the key; it only carries the MAC from
//! the primary to the secondary. Because the MAC covers the session id the
//! client claims, a token minted for one session is worthless for another;
//! because it covers the target, a secondary refuses a token minted for
//! another secondary that shares the key (each checks the target against its
//! own identity); and the secondary's replay cache makes each token
//! single-use.

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

    /// The token authorising path `path` of session `session` to join the
    /// secondary at `address` with certificate name `server_name`, until
    /// `expiry_unix` (seconds since the Unix epoch). `address` is the text
    /// the AddPath carries (`SocketAddr`'s `Display` form). Primaries mint
    /// tokens themselves in `add_path`; this is for orchestration outside
    /// kwik and for tests.
    pub fn mint(
        &self,
        session: SessionId,
        path: crate::PathId,
        expiry_unix: u64,
        address: &str,
        server_name: &str,
    ) -> bytes::Bytes {
        let claims = TokenClaims {
            session_id: session,
            path_id: path.0,
            expiry_unix,
            address: address.to_string(),
            server_name: server_name.to_string(),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    pub session_id: SessionId,
    pub path_id: u64,
    /// Seconds since the Unix epoch after which the token is void.
    pub expiry_unix: u64,
    /// The secondary's address as the AddPath gave it.
    pub address: String,
    /// The secondary's certificate name as the AddPath gave it.
    pub server_name: String,
}

/// The MAC input (PROTOCOL.md §10.2): fixed fields, then the target's
/// address and name, each prefixed with its length so that no two claims
/// share an encoding.
fn message(claims: &TokenClaims) -> Vec<u8> {
    let mut m = Vec::with_capacity(48 + claims.address.len() + claims.server_name.len());
    m.extend_from_slice(b"kwikpath");
    m.extend_from_slice(&claims.session_id.0);
    m.extend_from_slice(&claims.path_id.to_be_bytes());
    m.extend_from_slice(&claims.expiry_unix.to_be_bytes());
    for text in [&claims.address, &claims.server_name] {
        // Both are at most 255 bytes (checked at the wire edge and in add_path).
        m.extend_from_slice(&(text.len() as u16).to_be_bytes());
        m.extend_from_slice(text.as_bytes());
    }
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
            address: "10.0.0.2:4433".into(),
            server_name: "cdn.test".into(),
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
        // Another target, or another name: another token.
        let mut elsewhere = c.clone();
        elsewhere.address = "10.0.0.3:4433".into();
        assert_eq!(
            v.verify(std::slice::from_ref(&key), &elsewhere, &mac, now),
            Err(TokenRefusal::BadMac)
        );
        let mut renamed = c.clone();
        renamed.server_name = "other.test".into();
        assert_eq!(
            v.verify(std::slice::from_ref(&key), &renamed, &mac, now),
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
