//! Logs per component: every kwik line has one of the documented targets,
//! a filter on one target shows that concern only, and state changes and
//! violations are logged once, with their code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kwik_core::ErrorCode;
use kwik_core::log::{CONTROL, DATA, DELEGATION, DRIVER, ENDPOINT, PATHS};
use kwik_core::proto::control::control_message::Body;
use kwik_core::proto::control::{self as msg};
use kwik_sim::abuse::{Arena, ServerRole};
use kwik_sim::hostile::{HostileClient, Step};
use kwik_sim::multi::{MultiOptions, MultiSetup, ServerLink, first_server_stream};
use kwik_sim::wire::control_record;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// One captured line: target, level, and its fields as `name=value`.
#[derive(Debug, Clone)]
struct Line {
    target: String,
    level: tracing::Level,
    fields: Vec<(String, String)>,
}

impl Line {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn message(&self) -> &str {
        self.field("message").unwrap_or("")
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Line>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("kwik::") {
            return;
        }
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Line {
            target: meta.target().to_string(),
            level: *meta.level(),
            fields,
        });
    }
}

/// Runs `f` with every kwik line at or above `filter` captured.
fn captured(filter: &str, f: impl FnOnce()) -> Vec<Line> {
    let capture = Capture::default();
    let subscriber = Registry::default().with(capture.clone().with_filter(EnvFilter::new(filter)));
    tracing::subscriber::with_default(subscriber, f);
    capture.0.lock().unwrap().clone()
}

/// A multi-server transfer in which one secondary is cut off for good
/// midway (a path death) after a lossy spell (health changes).
fn transfer_with_a_dead_path() {
    let size = 48 << 20;
    let links = vec![ServerLink::new(100, 40); 3];
    let mut s = MultiSetup::new(MultiOptions::new(31, links, size), |_| {});
    let stream = first_server_stream();
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 4
    });
    let victim = s.servers[2];
    s.sim.set_path(
        s.client_addr,
        victim,
        ServerLink::new(100, 40).config().loss(0.4),
    );
    s.run_until_client(Duration::from_secs(60), |c| {
        c.read.get(&stream).copied().unwrap_or(0) >= size / 2
    });
    s.sim.set_down(victim, true);
    s.sim
        .run_until_done(Duration::from_secs(300))
        .expect("the transfer completes");
    assert_eq!(s.client().read.get(&stream).copied(), Some(size));
}

#[test]
fn every_line_has_a_component_target() {
    let lines = captured("kwik=trace", transfer_with_a_dead_path);
    let known = [CONTROL, DATA, PATHS, DELEGATION, ENDPOINT, DRIVER];
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(known.contains(&l.target.as_str()), "{l:?}");
    }
    for target in [CONTROL, PATHS, DELEGATION, DATA] {
        assert!(
            lines.iter().any(|l| l.target == target),
            "nothing logged under {target}"
        );
    }
}

#[test]
fn a_filter_on_paths_shows_path_changes_only_each_once() {
    let lines = captured("kwik::paths=debug", transfer_with_a_dead_path);
    assert!(lines.iter().all(|l| l.target == PATHS), "{lines:#?}");
    assert!(lines.iter().all(|l| l.level <= tracing::Level::DEBUG));
    let deaths: Vec<&Line> = lines
        .iter()
        .filter(|l| l.message() == "path state" && l.field("state") == Some("Dead"))
        .collect();
    // Once by the client (which saw it) and once by the primary (told by
    // the client), with the code.
    assert_eq!(deaths.len(), 2, "{deaths:#?}");
    for d in &deaths {
        assert_eq!(
            d.field("code"),
            Some(ErrorCode::PathDead.to_string().as_str())
        );
    }
    let critical = lines
        .iter()
        .filter(|l| l.message() == "path health changed" && l.field("to") == Some("critical"))
        .count();
    assert!(critical >= 2, "the lossy spell was graded: {lines:#?}");
    // No transition is logged twice in a row for the same path and side.
    for pair in lines.windows(2) {
        let same = |a: &Line, b: &Line| {
            a.message() == b.message() && a.fields == b.fields && a.message() == "path state"
        };
        assert!(!same(&pair[0], &pair[1]), "{pair:#?}");
    }
}

#[test]
fn a_violation_is_logged_once_with_its_code() {
    let lines = captured("kwik::control=debug", || {
        let status = Body::PathStatus(msg::PathStatus {
            path_id: 1,
            state: msg::PathState::Dead as i32,
            reason: "r".repeat(1025),
            ..msg::PathStatus::default()
        });
        let steps = vec![Step::Control(control_record(status).into())];
        let mut a = Arena::scripted_client(5, ServerRole::Passive, true, steps);
        let id = a.attacker;
        let _ = a.sim.run_while(Duration::from_secs(3), |sim| {
            sim.node::<HostileClient>(id).ended_at().is_none()
        });
    });
    assert!(lines.iter().all(|l| l.target == CONTROL), "{lines:#?}");
    let violations: Vec<&Line> = lines
        .iter()
        .filter(|l| l.message().starts_with("violation"))
        .collect();
    assert_eq!(violations.len(), 1, "{lines:#?}");
    assert_eq!(
        violations[0].field("code"),
        Some(ErrorCode::InvalidFrame.to_string().as_str())
    );
}
