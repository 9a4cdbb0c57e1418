//! Shorthands for building kwik endpoints and configurations in tests and
//! benchmarks: dev certificates, seeded endpoints, loopback-style addresses.

use std::net::SocketAddr;
use std::time::Instant;

use kwik_core::{ClientConfig, EndpointConfig, KwikEndpoint, ServerConfig};

use crate::certs::DevCert;

/// Server name every dev certificate is issued for.
pub const SERVER_NAME: &str = "kwik.test";

/// `10.0.0.<host>:4433`-style simulated address (never touches a real network).
pub fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], 4433))
}

/// A client and a server configuration that trust each other's dev cert.
pub fn configs(cert: &DevCert) -> (ClientConfig, ServerConfig) {
    let client = ClientConfig::new(cert.client_config(&[])).expect("client TLS config");
    let mut server = ServerConfig::new(cert.server_config(&[])).expect("server TLS config");
    server.auto_accept = true;
    (client, server)
}

/// A dev certificate for [`SERVER_NAME`] (deterministic for a given seed).
pub fn dev_cert(seed: u64) -> DevCert {
    DevCert::with_seed(&[SERVER_NAME], seed)
}

/// An endpoint whose every random choice derives from `seed`.
pub fn endpoint(seed: u64, server: Option<ServerConfig>, now: Instant) -> KwikEndpoint {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = 0x6b;
    KwikEndpoint::new(EndpointConfig::new(bytes), server, now)
}
