//! Client-proposed paths (PROTOCOL.md §13): the client's proposals and
//! their answers, and the primary's checks, policy call and answer.
//!
//! The primary decides each proposal the moment it reads it, so it never
//! holds a proposal: what a client can make it keep is the few paths it
//! approved that are still connecting (at most
//! [`MAX_PENDING_PROPOSED_PATHS`]), two counters and a rate budget. A
//! client that proposes faster than the rate is refused, and one that goes
//! on is flooding and loses its session — the same treatment the client
//! gives a primary that floods it with AddPaths (§10.3). An approved
//! proposal is an ordinary AddPath, minted by the same code as the
//! application's own; it is not retried when it fails (the proposal was
//! the client's idea: the client may propose it again).

use super::*;
use crate::candidate::Candidate;
use crate::proposal::{
    MAX_OUTSTANDING_PROPOSALS, MAX_PENDING_PROPOSED_PATHS, PROPOSAL_BURST, PROPOSAL_RATE,
    ProposalContext, ProposalDecision, ProposalId, RefuseAll, invalid_candidate,
};

/// A session's proposal bookkeeping (each role uses its half).
#[derive(Debug)]
pub(super) struct Proposals {
    /// Client: the id of the latest proposal sent (ids only grow).
    last_sent: u64,
    /// Client: proposals sent and not answered yet.
    outstanding: BTreeMap<ProposalId, Candidate>,
    /// Primary: the highest proposal id received (ids only grow).
    last_received: u64,
    /// Primary: paths added for approved proposals that may still be
    /// connecting.
    pending: BTreeSet<PathId>,
    /// Primary: proposals the rate limit still admits.
    budget: RateBudget,
}

impl Proposals {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            last_sent: 0,
            outstanding: BTreeMap::new(),
            last_received: 0,
            pending: BTreeSet::new(),
            budget: RateBudget::new(PROPOSAL_BURST, now),
        }
    }
}

/// A refusal: the code and reason the ProposalAnswer carries.
type Refusal = (ErrorCode, String);

impl Session {
    /// Client: proposes `candidate` to the primary as a secondary path.
    pub(crate) fn propose_path(&mut self, candidate: &Candidate) -> Result<ProposalId, PathError> {
        if self.role != Role::Client {
            return Err(PathError::WrongRole);
        }
        if self.phase != Phase::Active {
            return Err(PathError::SessionClosed);
        }
        let (address, name) = (candidate.address, candidate.server_name.as_str());
        if let Some(why) = invalid_candidate(address, name) {
            return Err(PathError::InvalidCandidate(why));
        }
        // The AddPath an approval brings would be refused here anyway.
        if let Some(why) = self.path_refusal(address, name, None) {
            return Err(PathError::InvalidCandidate(why));
        }
        if self.proposals.outstanding.len() >= MAX_OUTSTANDING_PROPOSALS {
            return Err(PathError::LimitReached {
                limit: MAX_OUTSTANDING_PROPOSALS,
            });
        }
        let id = ProposalId(self.proposals.last_sent + 1);
        let body = Body::ProposePath(msg::ProposePath {
            proposal_id: id.0,
            address: address.to_string(),
            server_name: name.to_string(),
        });
        fits(&body, self.peer_max_control)?;
        self.proposals.last_sent = id.0;
        self.proposals.outstanding.insert(id, candidate.clone());
        tracing::debug!(target: crate::log::PATHS, session = %self.handle, %id, %address, server_name = name, "propose path");
        self.main_conn().send(body);
        Ok(id)
    }

    /// Client: the primary answered a proposal. An answer to nothing
    /// outstanding (unknown, or answered already), or an approval naming a
    /// path no AddPath announced, or another server than the one proposed,
    /// breaks the protocol.
    pub(super) fn on_proposal_answer(
        &mut self,
        m: msg::ProposalAnswer,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let proposal = ProposalId(m.proposal_id);
        let Some(candidate) = self.proposals.outstanding.remove(&proposal) else {
            return Err(violation(format!(
                "ProposalAnswer for {proposal}, which is not outstanding"
            )));
        };
        let outcome = if m.error_code == 0 {
            let path = PathId(m.path_id);
            // `wire::check` made sure an approval names a path.
            if m.path_id > self.last_add_path {
                return Err(violation(format!(
                    "{proposal} approved as {path}, which no AddPath named"
                )));
            }
            if let Some(info) = self.paths.get(&path)
                && (info.address != candidate.address || info.server_name != candidate.server_name)
            {
                return Err(violation(format!(
                    "{proposal} approved as {path}, which leads to {} ({}), not the proposed {} ({})",
                    info.address, info.server_name, candidate.address, candidate.server_name
                )));
            }
            Ok(path)
        } else {
            Err(PathFailure {
                code: ErrorCode::from_wire(m.error_code).unwrap_or(ErrorCode::Internal),
                reason: crate::error::bounded_reason(&m.reason).into(),
            })
        };
        tracing::debug!(target: crate::log::PATHS, session = %self.handle, %proposal, ?outcome, "proposal answered");
        ctx.events.push_back(Event::PathProposalAnswered {
            session: self.handle,
            proposal,
            outcome,
        });
        Ok(())
    }

    /// Primary: a client proposed a path. Answered at once, exactly once:
    /// approved (an AddPath, then the answer naming its path) or refused
    /// with a code.
    pub(super) fn on_propose_path(
        &mut self,
        m: msg::ProposePath,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), Violation> {
        let proposal = ProposalId(m.proposal_id);
        if m.proposal_id <= self.proposals.last_received {
            return Err(violation(format!(
                "ProposePath names {proposal}, not above the last one (proposal{})",
                self.proposals.last_received
            )));
        }
        self.proposals.last_received = m.proposal_id;
        if !self.confirmed {
            // Only the Hello and idempotent streams ride in 0-RTT (§12.3).
            return Err(violation("ProposePath before the handshake completed"));
        }
        let admitted =
            self.proposals
                .budget
                .admit(ctx.now, PROPOSAL_RATE, PROPOSAL_BURST, "ProposePath")?;
        let address: Option<SocketAddr> = m.address.parse().ok();
        let outcome = match address {
            None => Err((
                ErrorCode::InvalidFrame,
                format!("bad address {:?}", m.address),
            )),
            Some(_) if !admitted => Err((
                ErrorCode::ResourceLimit,
                format!(
                    "proposal rate limit ({PROPOSAL_RATE} per second, burst {PROPOSAL_BURST}) exceeded"
                ),
            )),
            Some(a) => self.decide_proposal(a, &m.server_name, ctx),
        };
        let (path_id, error_code, reason, failure) = match &outcome {
            Ok(path) => (path.0, 0, String::new(), None),
            Err((code, reason)) => {
                let reason = crate::error::bounded_reason(reason).to_string();
                let failure = PathFailure {
                    code: *code,
                    reason: reason.clone(),
                };
                (0, code.wire(), reason, Some(failure))
            }
        };
        tracing::debug!(target: crate::log::PATHS, session = %self.handle, %proposal, address = %m.address, server_name = %m.server_name, ?outcome, "path proposed");
        // After the AddPath (if any): the client learns of the path first.
        self.main_conn()
            .send(Body::ProposalAnswer(msg::ProposalAnswer {
                proposal_id: proposal.0,
                path_id,
                error_code,
                reason,
            }));
        if let Some(address) = address {
            ctx.events.push_back(Event::PathProposed {
                session: self.handle,
                proposal,
                candidate: Candidate::new(address, m.server_name),
                outcome: failure.map_or(Ok(PathId(path_id)), Err),
            });
        }
        Ok(())
    }

    /// Primary: kwik's checks, then the policy; on approval, the AddPath.
    fn decide_proposal(
        &mut self,
        address: SocketAddr,
        server_name: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<PathId, Refusal> {
        if let Some(why) = invalid_candidate(address, server_name) {
            return Err((ErrorCode::InvalidFrame, why));
        }
        let ongoing: Vec<PathInfo> = self
            .paths
            .values()
            .filter(|p| !p.state.is_final())
            .cloned()
            .collect();
        if ongoing.iter().any(|p| !p.primary && p.address == address) {
            return Err((
                ErrorCode::ProposalRefused,
                format!("{address} is a path of this session already"),
            ));
        }
        // A server the application added is the application's: its path may
        // be waiting for a retry, which a proposed path would make the
        // client refuse as a duplicate. Nor does this primary add itself.
        let own = ctx
            .server
            .is_some_and(|s| s.path_addresses.contains(&address));
        if own || self.targets.iter().any(|t| t.address == address) {
            return Err((
                ErrorCode::ProposalRefused,
                format!("{address} is this primary or one of its own secondaries"),
            ));
        }
        let paths = &self.paths;
        self.proposals.pending.retain(|p| {
            paths.get(p).is_some_and(|info| {
                matches!(info.state, PathState::Initializing | PathState::Handshaking)
            })
        });
        if self.proposals.pending.len() >= MAX_PENDING_PROPOSED_PATHS {
            return Err((
                ErrorCode::ResourceLimit,
                format!("{MAX_PENDING_PROPOSED_PATHS} proposed paths are still connecting"),
            ));
        }
        let candidate = Candidate::new(address, server_name);
        let context = ProposalContext {
            session: self.handle,
            id: self.id.expect("active"),
            client: self.paths[&PathId::PRIMARY].address,
            paths: &ongoing,
        };
        let decision = match ctx.server {
            Some(server) => server.proposal_policy.decide(&candidate, &context),
            None => crate::proposal::ProposalPolicy::decide(&RefuseAll, &candidate, &context),
        };
        if let ProposalDecision::Refuse(reason) = decision {
            return Err((ErrorCode::ProposalRefused, reason));
        }
        let path = self
            .send_add_path(ctx.now, ctx.unix_now, address, server_name, ctx.events)
            .map_err(|e| {
                (
                    e.code(),
                    format!("approved, but the path cannot be added: {e}"),
                )
            })?;
        self.proposals.pending.insert(path);
        Ok(path)
    }
}
