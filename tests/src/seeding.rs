//! Seeded quinn-proto configuration.
//!
//! quinn-proto draws randomness in several places that its defaults feed
//! from the thread RNG: the endpoint RNG (packet-number skips, connection
//! RNGs), the connection-ID generator, the client's initial destination CID,
//! the stateless-reset key and the server's token key. For a simulation to
//! replay exactly, every one of them must come from the scenario seed. The
//! helpers here build configs with all of them derived from a `u64` seed
//! (through SHA-256 with a distinct label each, so they are independent).
//!
//! What remains random is the content of TLS handshakes (ring draws key
//! shares and randoms from the OS); that changes bytes, not sizes or timing,
//! so traces stay reproducible.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn_proto::crypto;
use quinn_proto::{
    ClientConfig, ConnectionId, ConnectionIdGenerator, EndpointConfig, ServerConfig,
    TransportConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ring::{hkdf, hmac};

/// 32 bytes derived from `seed` for the purpose named by `label`.
pub fn derive_key(seed: u64, label: &str) -> [u8; 32] {
    let mut input = Vec::with_capacity(label.len() + 9);
    input.extend_from_slice(label.as_bytes());
    input.push(0);
    input.extend_from_slice(&seed.to_le_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A connection-ID generator drawing random IDs from a seeded RNG (quinn's
/// default generators use the thread RNG).
#[derive(Debug)]
pub struct SeededCidGenerator {
    rng: StdRng,
    len: usize,
}

impl SeededCidGenerator {
    /// Length of the generated IDs, like quinn's default.
    pub const LEN: usize = 8;

    /// A generator whose IDs are determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededCidGenerator {
            rng: StdRng::from_seed(derive_key(seed, "cid generator")),
            len: Self::LEN,
        }
    }
}

impl ConnectionIdGenerator for SeededCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; Self::LEN];
        self.rng.fill_bytes(&mut bytes[..self.len]);
        ConnectionId::new(&bytes[..self.len])
    }

    fn cid_len(&self) -> usize {
        self.len
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// An `EndpointConfig` whose RNG seed, stateless-reset key (ring HMAC) and
/// connection-ID generators all derive from `seed`. Each generator the
/// endpoint asks for gets its own sub-seed.
pub fn seeded_endpoint_config(seed: u64) -> EndpointConfig {
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &derive_key(seed, "reset key"));
    let mut cfg = EndpointConfig::new(Arc::new(reset_key));
    cfg.rng_seed(Some(derive_key(seed, "endpoint rng")));
    let counter = std::sync::atomic::AtomicU64::new(0);
    cfg.cid_generator(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Distinct per generator; `SeededCidGenerator::new` hashes it.
        Box::new(SeededCidGenerator::new(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(n),
        ))
    });
    cfg
}

/// A quinn `ServerConfig` with its token key (ring HKDF) derived from
/// `seed`.
pub fn seeded_server_config(
    seed: u64,
    crypto: Arc<dyn crypto::ServerConfig>,
    transport: Arc<TransportConfig>,
) -> ServerConfig {
    let token_key = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&derive_key(seed, "token key"));
    let mut cfg = ServerConfig::new(crypto, Arc::new(token_key));
    cfg.transport_config(transport);
    cfg
}

/// A quinn `ClientConfig` whose initial destination connection IDs come
/// from a seeded RNG.
pub fn seeded_client_config(
    seed: u64,
    crypto: Arc<dyn crypto::ClientConfig>,
    transport: Arc<TransportConfig>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new(crypto);
    cfg.transport_config(transport);
    let rng = Mutex::new(StdRng::from_seed(derive_key(seed, "initial dcid")));
    cfg.initial_dst_cid_provider(Arc::new(move || {
        let mut bytes = [0u8; 16];
        rng.lock().expect("rng lock").fill_bytes(&mut bytes);
        ConnectionId::new(&bytes)
    }));
    cfg
}
