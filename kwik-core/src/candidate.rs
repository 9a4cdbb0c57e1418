//! Servers a primary could add as secondary paths.
//!
//! Where candidates come from — a static list, DNS SRV records, mDNS, a
//! client's proposal — is the business of the layers above (kwik-discovery,
//! the application); kwik-core only needs their common shape, so that the
//! automatic-scaling policy and the approval of client-proposed paths can
//! choose among them without doing any I/O.

use std::net::SocketAddr;

/// One server that could serve a session as a secondary path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    /// Where its kwik endpoint listens.
    pub address: SocketAddr,
    /// The name its certificate must be valid for.
    pub server_name: String,
    /// Preference class as in DNS SRV: lower is tried first (0 by default).
    pub priority: u16,
    /// Relative share among candidates of the same priority, as in DNS SRV
    /// (0: no preference).
    pub weight: u16,
    /// Where it runs, if known (a free-form label such as `eu-west`).
    pub region: Option<String>,
}

impl Candidate {
    /// A candidate with no preference and no region.
    pub fn new(address: SocketAddr, server_name: impl Into<String>) -> Self {
        Self {
            address,
            server_name: server_name.into(),
            priority: 0,
            weight: 0,
            region: None,
        }
    }

    /// The same candidate with an SRV-style priority and weight.
    pub fn with_preference(mut self, priority: u16, weight: u16) -> Self {
        self.priority = priority;
        self.weight = weight;
        self
    }

    /// The same candidate with a region label.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}
