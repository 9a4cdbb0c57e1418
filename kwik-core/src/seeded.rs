//! Everything random, drawn from the endpoint's one seed.
//!
//! quinn-proto lets most of its randomness be seeded, but its default
//! connection-id generator and config constructors read the thread RNG. kwik
//! replaces each of those with a generator derived from
//! [`EndpointConfig::seed`](crate::EndpointConfig::seed), so one seed fixes
//! every choice and a simulation replays exactly.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Deterministic generators derived from the endpoint seed, in a fixed order.
pub(crate) struct Seeds {
    pub quinn: [u8; 32],
    pub cids: [u8; 32],
    pub reset_key: [u8; 64],
    pub token_key: [u8; 64],
    pub session_ids: [u8; 32],
}

impl Seeds {
    pub(crate) fn derive(seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let mut take32 = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let quinn = take32();
        let cids = take32();
        let reset_key = [take32(), take32()].concat().try_into().expect("64 bytes");
        let token_key = [take32(), take32()].concat().try_into().expect("64 bytes");
        let session_ids = take32();
        Self {
            quinn,
            cids,
            reset_key,
            token_key,
            session_ids,
        }
    }
}

/// Connection ids from a seeded RNG (quinn's default reads the thread RNG).
pub(crate) struct SeededCids {
    rng: StdRng,
}

impl SeededCids {
    pub(crate) const LEN: usize = 8;

    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self {
            rng: StdRng::from_seed(seed),
        }
    }
}

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; Self::LEN];
        self.rng.fill_bytes(&mut bytes);
        ConnectionId::new(&bytes)
    }
    fn cid_len(&self) -> usize {
        Self::LEN
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
