//! The observable state machines of a session and of its paths
//! (PROTOCOL.md §15): [`SessionState`], its transition table, the bounded
//! history both machines keep, and [`SessionInfo`].
//!
//! Each machine has one table, `may_become(from, to)`, and one function
//! through which every change of state goes: it checks the transition
//! against the table (a debug build panics on an illegal one, a release
//! build ignores it), records it in the history and emits the event
//! ([`Event::SessionState`], [`Event::PathState`]) exactly once. What a
//! peer reports is never trusted to be a legal step: it is routed through
//! the legal intermediate states ([`route`]) or ignored.
//!
//! The path machine's states live with the rest of the path model in
//! [`crate::paths`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::event::Event;
use crate::ids::{SessionHandle, SessionId};
use crate::session::Role;

/// Most transitions a history keeps (the first entry, the creation, is kept
/// always; older transitions after it are forgotten).
pub const MAX_HISTORY: usize = 64;

/// Where a session stands. Transitions (PROTOCOL.md §15.1):
/// Initializing → Handshaking → Active ⇄ Degraded; Handshaking, Active or
/// Degraded → Closing → Closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionState {
    /// Created, its connection not started yet.
    Initializing,
    /// QUIC handshake and kwik handshake (Hello/Welcome, or Join/Joined)
    /// under way.
    Handshaking,
    /// Established and healthy.
    Active,
    /// Established, but the connection it cannot do without is silent past
    /// the degraded threshold: a client's primary connection, a
    /// secondary's connection to its client.
    Degraded,
    /// Closed or failed; its connections are closing and draining.
    Closing,
    /// Every connection drained; the session is gone.
    Closed,
}

impl SessionState {
    /// Every state, in order.
    pub const ALL: [SessionState; 6] = [
        SessionState::Initializing,
        SessionState::Handshaking,
        SessionState::Active,
        SessionState::Degraded,
        SessionState::Closing,
        SessionState::Closed,
    ];

    /// True if the table of PROTOCOL.md §15.1 allows moving from `self`
    /// to `next` (never to the same state).
    pub fn may_become(self, next: SessionState) -> bool {
        use SessionState::*;
        matches!(
            (self, next),
            (Initializing, Handshaking)
                | (Handshaking, Active)
                | (Handshaking, Closing)
                | (Active, Degraded)
                | (Active, Closing)
                | (Degraded, Active)
                | (Degraded, Closing)
                | (Closing, Closed)
        )
    }

    /// True once the session is closing or closed.
    pub fn is_closing(self) -> bool {
        matches!(self, SessionState::Closing | SessionState::Closed)
    }

    /// Its name, as PROTOCOL.md writes it.
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Initializing => "Initializing",
            SessionState::Handshaking => "Handshaking",
            SessionState::Active => "Active",
            SessionState::Degraded => "Degraded",
            SessionState::Closing => "Closing",
            SessionState::Closed => "Closed",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything observable about one session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session.
    pub handle: SessionHandle,
    /// Its server-assigned id, once established.
    pub id: Option<SessionId>,
    /// The part it plays.
    pub role: Role,
    /// Current state.
    pub state: SessionState,
    /// Every state it has been in, with when (at most [`MAX_HISTORY`]
    /// entries: the first, then the newest).
    pub history: Vec<(Instant, SessionState)>,
}

/// A state machine's current state and bounded history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine<S> {
    pub state: S,
    pub history: Vec<(Instant, S)>,
}

impl<S: Copy + PartialEq> Machine<S> {
    pub(crate) fn new(state: S, now: Instant) -> Self {
        Self {
            state,
            history: vec![(now, state)],
        }
    }

    /// Moves to `next` if `legal` says so, recording it; returns the state
    /// left. Staying put is no transition (`None`, quietly); an illegal
    /// move is a bug in the caller: a debug build panics, a release build
    /// ignores it.
    pub(crate) fn step(
        &mut self,
        next: S,
        now: Instant,
        legal: impl Fn(S, S) -> bool,
        what: &dyn fmt::Display,
    ) -> Option<S> {
        let from = self.state;
        if from == next {
            return None;
        }
        if !legal(from, next) {
            debug_assert!(false, "illegal transition of {what}");
            tracing::warn!(target: crate::log::PATHS, %what, "illegal state transition ignored");
            return None;
        }
        self.state = next;
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push((now, next));
        Some(from)
    }
}

/// The shortest chain of legal transitions from `from` to `to` (excluding
/// `from`, ending with `to`), among `all` states; empty if `from == to`,
/// `None` if `to` cannot be reached.
pub fn route<S: Copy + PartialEq>(
    all: &[S],
    legal: impl Fn(S, S) -> bool,
    from: S,
    to: S,
) -> Option<Vec<S>> {
    if from == to {
        return Some(Vec::new());
    }
    // Breadth-first over a handful of states.
    let mut previous: Vec<Option<usize>> = vec![None; all.len()];
    let index = |s: S| all.iter().position(|x| *x == s);
    let start = index(from)?;
    let goal = index(to)?;
    let mut seen = vec![false; all.len()];
    seen[start] = true;
    let mut queue = VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        if i == goal {
            let mut chain = vec![all[goal]];
            let mut at = goal;
            while let Some(p) = previous[at] {
                if p == start {
                    break;
                }
                chain.push(all[p]);
                at = p;
            }
            chain.reverse();
            return Some(chain);
        }
        for (j, next) in all.iter().enumerate() {
            if !seen[j] && legal(all[i], *next) {
                seen[j] = true;
                previous[j] = Some(i);
                queue.push_back(j);
            }
        }
    }
    None
}

/// Moves a session's machine to `next` and emits [`Event::SessionState`];
/// the one place a session's state changes. Returns whether it moved.
pub(crate) fn set_session_state(
    machine: &mut Machine<SessionState>,
    session: SessionHandle,
    next: SessionState,
    now: Instant,
    events: &mut VecDeque<Event>,
) -> bool {
    let current = machine.state;
    // Described only if the move is illegal: no formatting per transition.
    let what = format_args!("{session}: {current} -> {next}");
    let Some(from) = machine.step(next, now, SessionState::may_become, &what) else {
        return false;
    };
    tracing::debug!(target: crate::log::CONTROL, %session, %from, to = %next, "session state");
    events.push_back(Event::SessionState {
        session,
        from,
        to: next,
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_close_from_every_live_state_and_never_come_back() {
        use SessionState::*;
        for s in [Handshaking, Active, Degraded] {
            assert!(s.may_become(Closing), "{s}");
            assert!(!s.may_become(Closed), "{s}: only through Closing");
        }
        for s in SessionState::ALL {
            assert!(!Closed.may_become(s), "Closed is final");
            assert!(!s.may_become(s), "{s} to itself");
            assert!(!s.may_become(Initializing), "{s} back to the start");
            if s != Closed {
                assert!(!Closing.may_become(s), "Closing leads only to Closed");
            }
        }
        assert!(Initializing.may_become(Handshaking));
        assert!(!Initializing.may_become(Active));
        assert!(!Active.may_become(Handshaking));
    }

    #[test]
    fn every_state_reaches_closed_and_routes_are_shortest() {
        use SessionState::*;
        for s in SessionState::ALL {
            let chain = route(&SessionState::ALL, SessionState::may_become, s, Closed)
                .unwrap_or_else(|| panic!("{s} cannot reach Closed"));
            let mut at = s;
            for step in &chain {
                assert!(at.may_become(*step), "{at} -> {step}");
                at = *step;
            }
            assert_eq!(at, Closed);
        }
        assert_eq!(
            route(&SessionState::ALL, SessionState::may_become, Active, Closed),
            Some(vec![Closing, Closed])
        );
        assert_eq!(
            route(&SessionState::ALL, SessionState::may_become, Closed, Active),
            None
        );
        assert_eq!(
            route(&SessionState::ALL, SessionState::may_become, Active, Active),
            Some(vec![])
        );
    }

    #[test]
    fn a_machine_records_each_transition_once_and_bounds_its_history() {
        let t = Instant::now();
        let mut events = VecDeque::new();
        let h = SessionHandle(7);
        let mut m = Machine::new(SessionState::Initializing, t);
        assert!(set_session_state(
            &mut m,
            h,
            SessionState::Handshaking,
            t,
            &mut events
        ));
        assert!(!set_session_state(
            &mut m,
            h,
            SessionState::Handshaking,
            t,
            &mut events
        ));
        assert!(set_session_state(
            &mut m,
            h,
            SessionState::Active,
            t,
            &mut events
        ));
        for i in 0..100 {
            let next = if i % 2 == 0 {
                SessionState::Degraded
            } else {
                SessionState::Active
            };
            assert!(set_session_state(&mut m, h, next, t, &mut events));
        }
        assert_eq!(events.len(), 102);
        assert_eq!(m.history.len(), MAX_HISTORY);
        assert_eq!(m.history[0].1, SessionState::Initializing);
        assert_eq!(m.history.last().unwrap().1, SessionState::Active);
        assert_eq!(
            events[0],
            Event::SessionState {
                session: h,
                from: SessionState::Initializing,
                to: SessionState::Handshaking
            }
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "illegal transition")]
    fn an_illegal_transition_panics_in_debug_builds() {
        let t = Instant::now();
        let mut m = Machine::new(SessionState::Active, t);
        set_session_state(
            &mut m,
            SessionHandle(1),
            SessionState::Initializing,
            t,
            &mut VecDeque::new(),
        );
    }
}
