//! Review (round 10): 0-RTT resumption and the primary's held path
//! messages (PROTOCOL.md §12.3).
//!
//! A primary holds the AddPath of a session that began in 0-RTT until the
//! handshake confirms the client — but it starts the path's answer timer
//! (`add_path_timeout`) when the application asks, not when the AddPath
//! leaves. The time the message spends held is taken from the client's
//! time to answer: with a timeout between one and two round trips, a path
//! that a full-handshake session would have had answered in time fails as
//! unanswered in a 0-RTT session, before the client ever saw its AddPath.

use std::time::Duration;

use kwik_core::TokenKey;
use kwik_sim::KwikNode;
use kwik_sim::resume::{Mode, Responder, ResumeNet};
use kwik_sim::setup::addr;

const RTT: Duration = Duration::from_millis(50);
const LINGER: Duration = Duration::from_millis(300);
/// Between one and two round trips: enough for a client to answer an
/// AddPath sent at once.
const ADD_TIMEOUT: Duration = Duration::from_millis(75);

/// A warmed network whose server asks every new session to join a
/// secondary (which the client's default policy refuses at once).
fn net(seed: u64) -> ResumeNet {
    let mut net = ResumeNet::new(seed, RTT, |c| {
        c.token_key = Some(TokenKey::new([seed as u8; 32]));
        c.add_path_timeout = ADD_TIMEOUT;
    });
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::Full, b"GET /warm-up", LINGER);
    assert!(net.requester(id).response_ok());
    net.sim
        .node_mut::<KwikNode<Responder>>(net.server)
        .app
        .add_path = Some(addr(50));
    net
}

/// When the path ended on the server, measured from the session's
/// establishment there, and when the session was confirmed.
fn path_outcome(net: &ResumeNet, mode: Mode) -> (Duration, Option<Duration>) {
    let server = net.responder();
    let &(session, established, _) = server.established.last().expect("a session");
    let &(_, _, failed) = server
        .path_failed
        .iter()
        .find(|(s, ..)| *s == session)
        .unwrap_or_else(|| panic!("{mode:?}: the path ended"));
    let settled = server
        .settled
        .iter()
        .find(|(s, ..)| *s == session)
        .map(|(.., at)| *at - established);
    (failed - established, settled)
}

/// The control: after a full handshake the AddPath leaves at once and the
/// client's refusal is back one round trip later, within the timeout.
#[test]
fn a_full_handshake_session_gets_its_addpath_answered_in_time() {
    let mut net = net(61);
    let warm = net.client.clone();
    net.exchange(&warm, Mode::Full, b"GET /full", LINGER);
    let (failed, _) = path_outcome(&net, Mode::Full);
    assert!(
        failed >= RTT && failed < ADD_TIMEOUT,
        "answered by the client after a round trip: {failed:?}"
    );
}

/// The same in 0-RTT: the AddPath is held until the handshake completes
/// (about a round trip after establishment), so the client's answer can
/// only come two round trips after establishment. It must still count:
/// the answer timer has to start when the AddPath leaves.
#[test]
fn a_0rtt_session_gives_its_held_addpath_the_full_answer_time() {
    let mut net = net(62);
    let warm = net.client.clone();
    let id = net.exchange(&warm, Mode::ZeroRtt, b"GET /early", LINGER);
    assert_eq!(net.requester(id).settled, Some(true), "0-RTT accepted");
    let (failed, settled) = path_outcome(&net, Mode::ZeroRtt);
    let settled = settled.expect("confirmed");
    assert!(
        failed >= settled + RTT,
        "the path ended {failed:?} after establishment, but its AddPath left only at \
         confirmation ({settled:?}): it timed out unseen"
    );
}
