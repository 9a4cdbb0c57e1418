//! Checking the session and path state machines (PROTOCOL.md §15) from the
//! outside: every node records the `SessionState` and `PathState` events
//! its endpoint emits ([`StateLog`], kept by every
//! [`KwikNode`](crate::kwik_node::KwikNode)), and the judge here asserts
//! that each is a transition the tables allow, that each event's `from` is
//! the previous one's `to`, that a drained session ended `Closed` with
//! every path ended, and that the histories in `SessionInfo` and
//! `PathInfo` tell the same story. [`protocol_tables`] reads the tables
//! out of PROTOCOL.md, so a test can hold the code to the text.

use std::collections::{BTreeMap, BTreeSet};

use kwik_core::{
    Event, KwikEndpoint, MAX_HISTORY, PathFilter, PathId, PathState, SessionHandle, SessionInfo,
    SessionState,
};

/// Every state transition one endpoint reported, per session and path.
#[derive(Debug, Default, Clone)]
pub struct StateLog {
    /// Each session's transitions, in order.
    pub sessions: BTreeMap<SessionHandle, Vec<(SessionState, SessionState)>>,
    /// Each path's transitions, in order.
    pub paths: BTreeMap<(SessionHandle, PathId), Vec<(PathState, PathState)>>,
    /// Sessions whose `SessionDrained` came.
    pub drained: BTreeSet<SessionHandle>,
    /// Sessions whose `SessionClosed` came.
    pub closed: BTreeSet<SessionHandle>,
    /// Events that named a session after its `SessionDrained`.
    pub after_drained: Vec<String>,
}

impl StateLog {
    /// Records `event` if it is about states (cheap otherwise).
    pub fn record(&mut self, event: &Event) {
        let session = match event {
            Event::SessionState { session, from, to } => {
                self.sessions
                    .entry(*session)
                    .or_default()
                    .push((*from, *to));
                *session
            }
            Event::PathState {
                session,
                path,
                from,
                to,
            } => {
                self.paths
                    .entry((*session, *path))
                    .or_default()
                    .push((*from, *to));
                *session
            }
            Event::SessionClosed { session, .. } => {
                self.closed.insert(*session);
                *session
            }
            Event::SessionDrained { session, .. } => {
                self.drained.insert(*session);
                return;
            }
            _ => return,
        };
        if self.drained.contains(&session) {
            self.after_drained.push(format!("{event:?}"));
        }
    }

    /// Everything in the log the state machines forbid, described.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.after_drained.clone();
        for (session, steps) in &self.sessions {
            chain(
                &mut v,
                &format!("{session}"),
                steps,
                SessionState::Initializing,
                SessionState::may_become,
            );
            let last = steps.last().map(|s| s.1);
            if self.drained.contains(session) && last != Some(SessionState::Closed) {
                v.push(format!("{session} drained in state {last:?}, not Closed"));
            }
            if self.closed.contains(session) && !last.is_some_and(|s| s.is_closing()) {
                v.push(format!("{session} closed but its state is {last:?}"));
            }
        }
        for session in &self.drained {
            if !self.sessions.contains_key(session) {
                v.push(format!("{session} drained without a state event"));
            }
        }
        for ((session, path), steps) in &self.paths {
            chain(
                &mut v,
                &format!("{session} {path}"),
                steps,
                PathState::Initializing,
                PathState::may_become,
            );
            if self.drained.contains(session) && !steps.last().is_some_and(|s| s.1.is_final()) {
                v.push(format!(
                    "{session} {path} still {:?} when its session drained",
                    steps.last().map(|s| s.1)
                ));
            }
        }
        v
    }

    /// Sessions the log saw start and not drain.
    pub fn undrained(&self) -> Vec<SessionHandle> {
        self.sessions
            .keys()
            .filter(|s| !self.drained.contains(s))
            .copied()
            .collect()
    }

    /// The distinct transitions the log holds.
    pub fn observed(&self) -> Observed {
        let mut o = Observed::default();
        o.add(self);
        o
    }
}

/// Distinct transitions seen, gathered over logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Session transitions.
    pub sessions: BTreeSet<(SessionState, SessionState)>,
    /// Path transitions.
    pub paths: BTreeSet<(PathState, PathState)>,
}

impl Observed {
    /// Adds what `log` saw.
    pub fn add(&mut self, log: &StateLog) {
        self.sessions
            .extend(log.sessions.values().flatten().copied());
        self.paths.extend(log.paths.values().flatten().copied());
    }

    /// Adds what `other` saw.
    pub fn merge(&mut self, other: &Observed) {
        self.sessions.extend(other.sessions.iter().copied());
        self.paths.extend(other.paths.iter().copied());
    }
}

/// Checks a chain of reported transitions: each allowed, each starting
/// where the previous ended, the first starting at `first`.
fn chain<S: Copy + PartialEq + std::fmt::Debug>(
    v: &mut Vec<String>,
    what: &str,
    steps: &[(S, S)],
    first: S,
    legal: impl Fn(S, S) -> bool,
) {
    let mut at = first;
    for (i, (from, to)) in steps.iter().enumerate() {
        if *from != at {
            v.push(format!(
                "{what}: event {i} leaves {from:?}, but the previous one entered {at:?}"
            ));
        }
        if !legal(*from, *to) {
            v.push(format!("{what}: illegal transition {from:?} -> {to:?}"));
        }
        at = *to;
    }
}

/// Checks a history (the first entry, then the newest, at most
/// [`MAX_HISTORY`]): consecutive entries are allowed transitions, except
/// across the gap a full history leaves after its first entry.
pub fn check_history<S: Copy + PartialEq + std::fmt::Debug, T>(
    v: &mut Vec<String>,
    what: &str,
    history: &[(T, S)],
    first: S,
    legal: impl Fn(S, S) -> bool,
) {
    if history.first().map(|h| h.1) != Some(first) {
        v.push(format!("{what}: history does not start at {first:?}"));
    }
    for (i, pair) in history.windows(2).enumerate() {
        if i == 0 && history.len() >= MAX_HISTORY {
            continue;
        }
        if !legal(pair[0].1, pair[1].1) {
            v.push(format!(
                "{what}: history holds {:?} -> {:?}",
                pair[0].1, pair[1].1
            ));
        }
    }
}

/// Checks the infos of every session `ep` still has against the tables
/// and against `log` (the current state is where the events left it).
pub fn check_endpoint(ep: &mut KwikEndpoint, log: &StateLog) -> Vec<String> {
    let mut v = Vec::new();
    let handles: Vec<SessionHandle> = ep.sessions().collect();
    for h in handles {
        let Some(mut view) = ep.session(h) else {
            continue;
        };
        let info: SessionInfo = view.info();
        check_history(
            &mut v,
            &format!("{h}"),
            &info.history,
            SessionState::Initializing,
            SessionState::may_become,
        );
        if view.state() != info.state {
            v.push(format!("{h}: state() and info() disagree"));
        }
        let reported = log.sessions.get(&h).and_then(|s| s.last()).map(|s| s.1);
        if reported.unwrap_or(SessionState::Initializing) != info.state {
            v.push(format!(
                "{h}: in {:?}, the events say {reported:?}",
                info.state
            ));
        }
        for p in view.paths(PathFilter::All) {
            let what = format!("{h} {}", p.id);
            check_history(
                &mut v,
                &what,
                &p.history,
                PathState::Initializing,
                PathState::may_become,
            );
            let reported = log
                .paths
                .get(&(h, p.id))
                .and_then(|s| s.last())
                .map(|s| s.1);
            if reported.unwrap_or(PathState::Initializing) != p.state {
                v.push(format!(
                    "{what}: in {:?}, the events say {reported:?}",
                    p.state
                ));
            }
        }
    }
    v
}

/// The transitions a PROTOCOL.md table lists, as `(from, to)` names: the
/// rows `| from | to | trigger |` under the heading that starts with
/// `heading` (e.g. `"### 15.1"`), up to the next heading.
pub fn protocol_table(protocol: &str, heading: &str) -> Vec<(String, String)> {
    let Some(start) = protocol.lines().position(|l| l.starts_with(heading)) else {
        return Vec::new();
    };
    protocol
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            match cells.as_slice() {
                [from, to, _trigger] if *from != "from" && !from.starts_with('-') => {
                    Some((from.to_string(), to.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}
