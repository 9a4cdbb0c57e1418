//! Client-proposed paths: the types a client proposes with and the policy
//! a primary decides with (PROTOCOL.md §13).
//!
//! A client may learn of a server its primary does not know — a cache on
//! its own network, a peer it discovered — and ask the primary to add it as
//! a path. The primary stays the only side that mints path tokens and
//! assigns path ids: an approved proposal becomes an ordinary AddPath, with
//! an ordinary token, and the client's own [`PathPolicy`](crate::PathPolicy)
//! still judges it like any other.
//!
//! Why the primary's default refuses: a token and a path commit a
//! secondary server's work, and that server trusts the primary's key, not
//! the client. A primary that approved whatever a client named would let
//! any client make it hand out tokens for, and delegate ranges to,
//! machines of the client's choosing. So a primary approves only what its
//! [`ProposalPolicy`] says; the default ([`RefuseAll`]) says no, and
//! [`ApproveListed`] says yes to the servers it lists.
//!
//! The decision is a plain function call made while the session is driven:
//! it must not block or do I/O, and the same inputs must give the same
//! decision (kwik-core stays deterministic).

use std::fmt;
use std::net::SocketAddr;

use crate::candidate::{Candidate, undialable};
use crate::ids::{SessionHandle, SessionId};
use crate::paths::PathInfo;

/// Most proposals a client may have unanswered at once (PROTOCOL.md §13.4).
pub const MAX_OUTSTANDING_PROPOSALS: usize = 4;

/// Most paths a primary keeps connecting for approved proposals at once;
/// further proposals are refused with `KWIK_RESOURCE_LIMIT` until one of
/// them joined or ended (PROTOCOL.md §13.4).
pub const MAX_PENDING_PROPOSED_PATHS: usize = 4;

/// Proposals a primary decides per second on average; more are refused
/// with `KWIK_RESOURCE_LIMIT` (PROTOCOL.md §13.4).
pub const PROPOSAL_RATE: u32 = 4;

/// Proposals a primary decides in a burst before [`PROPOSAL_RATE`] applies;
/// a client that goes on past the rate for more than this many proposals
/// in a row is flooding, and its session is closed with
/// `KWIK_RESOURCE_LIMIT`.
pub const PROPOSAL_BURST: u32 = 8;

/// A client's number for one of its proposals: above every earlier one of
/// the session, starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalId(pub u64);

impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal{}", self.0)
    }
}

/// What a primary knows of the session a proposal came in, for its
/// [`ProposalPolicy`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProposalContext<'a> {
    /// The primary's handle of the session.
    pub session: SessionHandle,
    /// The session's id.
    pub id: SessionId,
    /// The client's address (as the primary connection sees it).
    pub client: SocketAddr,
    /// The session's paths that have not ended (connecting or live), the
    /// primary connection first, in id order.
    pub paths: &'a [PathInfo],
}

/// A [`ProposalPolicy`]'s verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposalDecision {
    /// Add the proposed server as a path (an AddPath with a fresh token).
    Approve,
    /// Refuse it; the client is told `KWIK_PROPOSAL_REFUSED` and this
    /// reason (cut to 512 bytes).
    Refuse(String),
}

/// How a primary judges the servers its clients propose.
///
/// Called only for proposals that passed kwik's own checks (a dialable
/// address, a server name, not a path of the session already, within the
/// rate and the pending limit). It runs inside the endpoint's drive: no
/// blocking, no I/O, and deterministic.
pub trait ProposalPolicy: Send + Sync {
    /// Approves or refuses `proposal` for the session `session` describes.
    fn decide(&self, proposal: &Candidate, session: &ProposalContext<'_>) -> ProposalDecision;
}

/// The default policy: every proposal is refused, so that no client can
/// make a primary mint tokens for machines of its choosing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefuseAll;

impl ProposalPolicy for RefuseAll {
    fn decide(&self, _: &Candidate, _: &ProposalContext<'_>) -> ProposalDecision {
        ProposalDecision::Refuse("this primary accepts no proposed paths".into())
    }
}

/// Approves exactly the listed servers: a proposal matches a candidate
/// with the same address and the same server name (preference and region
/// are not compared: a client cannot know them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproveListed(pub Vec<Candidate>);

impl ProposalPolicy for ApproveListed {
    fn decide(&self, proposal: &Candidate, _: &ProposalContext<'_>) -> ProposalDecision {
        let listed = self
            .0
            .iter()
            .any(|c| c.address == proposal.address && c.server_name == proposal.server_name);
        if listed {
            ProposalDecision::Approve
        } else {
            ProposalDecision::Refuse(format!(
                "{} ({}) is not on the primary's list",
                proposal.address, proposal.server_name
            ))
        }
    }
}

/// Why a candidate cannot be proposed: its address cannot be a path's, or
/// its server name is empty or longer than the wire allows. `None` if it
/// can be.
pub(crate) fn invalid_candidate(address: SocketAddr, server_name: &str) -> Option<String> {
    if let Some(why) = undialable(address) {
        return Some(format!("{address} is {why}"));
    }
    if server_name.is_empty() {
        return Some("empty server name".into());
    }
    if server_name.len() > crate::wire::MAX_SERVER_NAME {
        return Some(format!(
            "server name of {} bytes exceeds {}",
            server_name.len(),
            crate::wire::MAX_SERVER_NAME
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn context(paths: &[PathInfo]) -> ProposalContext<'_> {
        ProposalContext {
            session: SessionHandle(0),
            id: SessionId([0; 16]),
            client: "10.0.0.100:5000".parse().unwrap(),
            paths,
        }
    }

    #[test]
    fn default_refuses_and_the_list_matches_address_and_name() {
        let a: SocketAddr = "10.0.0.7:4433".parse().unwrap();
        let paths = [PathInfo::new(
            crate::PathId::PRIMARY,
            a,
            "x",
            Instant::now(),
        )];
        let cx = context(&paths);
        let c = Candidate::new(a, "edge");
        assert!(matches!(
            RefuseAll.decide(&c, &cx),
            ProposalDecision::Refuse(_)
        ));
        let list = ApproveListed(vec![Candidate::new(a, "edge").with_region("eu")]);
        assert_eq!(list.decide(&c, &cx), ProposalDecision::Approve);
        assert!(matches!(
            list.decide(&Candidate::new(a, "other"), &cx),
            ProposalDecision::Refuse(_)
        ));
        let elsewhere = Candidate::new("10.0.0.8:4433".parse().unwrap(), "edge");
        assert!(matches!(
            list.decide(&elsewhere, &cx),
            ProposalDecision::Refuse(_)
        ));
    }

    #[test]
    fn undialable_addresses_and_bad_names_are_invalid() {
        for bad in [
            "10.0.0.7:0",
            "0.0.0.0:4433",
            "[::]:4433",
            "224.0.0.1:4433",
            "[ff02::1]:4433",
            "255.255.255.255:4433",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            assert!(invalid_candidate(a, "edge").is_some(), "{bad}");
        }
        let good: SocketAddr = "10.0.0.7:4433".parse().unwrap();
        assert_eq!(invalid_candidate(good, "edge"), None);
        assert!(invalid_candidate(good, "").is_some());
        assert!(invalid_candidate(good, &"n".repeat(256)).is_some());
        assert_eq!(invalid_candidate(good, &"n".repeat(255)), None);
    }
}
