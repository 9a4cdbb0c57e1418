//! Where a kwik primary finds the secondaries it may add to its sessions.
//!
//! kwik-core only knows the shape of a possible secondary ([`Candidate`]):
//! an address, the name its certificate must be valid for, an SRV-style
//! preference and an optional region. Where such candidates come from is a
//! deployment decision, so it lives here, behind one small trait,
//! [`Discovery`], with three sources:
//!
//! * [`StaticList`] — a list written by hand (in code or in a file, one
//!   candidate per line): nothing to run, fully predictable.
//! * [`DnsSrv`] — DNS SRV records under `_kwik._udp.<domain>`: the operator
//!   changes the fleet by editing a zone, and priorities and weights come
//!   with the records.
//! * [`Mdns`] — multicast DNS on the local link (`_kwik._udp.local.`):
//!   secondaries announce themselves, nothing to configure, one LAN only.
//!
//! [`parse_spec`] turns the command line's `static:PATH`, `srv:NAME` and
//! `mdns:SERVICE_TYPE` into one of them.
//!
//! # Why every source is bounded and sorted
//! A DNS answer or an mDNS announcement is written by someone else, possibly
//! a hostile host on the network: every source stops at a configured number
//! of candidates (default [`DEFAULT_MAX_CANDIDATES`]) however much it is
//! sent, and every lookup has a deadline. Every source returns its
//! candidates in one deterministic order — priority ascending, then weight
//! descending, then address — with one candidate per address, so the same
//! records always give the same list whatever order the network delivered
//! them in (kwik's tests depend on reproducible runs).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod dns;
mod error;
mod mdns;
mod spec;
mod static_list;

use std::future::Future;
use std::pin::Pin;

pub use kwik_core::Candidate;

pub use crate::dns::{DEFAULT_DNS_TIMEOUT, DnsSrv};
pub use crate::error::DiscoveryError;
pub use crate::mdns::{DEFAULT_BROWSE_TIME, DEFAULT_MDNS_SERVICE, Mdns};
pub use crate::spec::{DiscoverySpec, SpecOptions, parse_spec};
pub use crate::static_list::StaticList;

/// Most candidates one source returns unless configured otherwise.
pub const DEFAULT_MAX_CANDIDATES: usize = 64;

/// What [`Discovery::discover`] returns: a boxed future, so that
/// `Box<dyn Discovery>` works and sources can be mixed in one list.
pub type DiscoverFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Candidate>, DiscoveryError>> + Send + 'a>>;

/// A source of candidate secondaries.
///
/// Each call looks again (re-reads the DNS, browses the link again), so a
/// caller that wants fresh candidates calls it again. The list is
/// deduplicated by address, bounded, and in the order described in the
/// crate documentation; an empty list means the source answered and knows
/// no candidate, an error that it could not answer.
pub trait Discovery: Send + Sync {
    /// Looks the candidates up.
    fn discover(&self) -> DiscoverFuture<'_>;

    /// A short description for messages, such as `srv:_kwik._udp.example.com`.
    fn describe(&self) -> String;
}

/// Puts candidates in the crate's deterministic order, one per address,
/// at most `max`, without undialable addresses: kwik-core's rule for every
/// list of servers.
pub use kwik_core::normalize_candidates as normalize;
