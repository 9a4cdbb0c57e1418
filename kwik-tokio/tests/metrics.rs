//! Endpoint metrics over real UDP on 127.0.0.1: registered with a
//! `prometheus-client` registry, encoded as OpenMetrics text, parsed back
//! line by line and checked against what the test itself sent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kwik_async::testing;
use kwik_tokio::prometheus_client::encoding::text::encode;
use kwik_tokio::prometheus_client::registry::Registry;
use kwik_tokio::{Endpoint, MetricsOptions, dev};

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `k="v",k2="v2"` (values may hold escaped quotes and backslashes).
fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("no key in {rest:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("dangling escape in {text:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value in {text:?}")),
            }
        };
        labels.push((key.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// Parses an OpenMetrics text exposition: every line a comment or a sample
/// with a float value, ending with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker: {text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rfind('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => line.split_once(' ').expect("name and value"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("closing brace");
                (name, parse_labels(labels).unwrap_or_else(|e| panic!("{e}")))
            }
            None => (series, Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn scrape(registry: &Registry) -> Vec<Sample> {
    let mut text = String::new();
    encode(&mut text, registry).expect("encoding to a String");
    parse(&text)
}

/// The samples named `name` whose labels include every pair of `want`.
fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// The value of the one sample `name` with labels `want`.
fn one(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, want);
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

/// Scrapes until `done` holds, for at most ten seconds.
async fn scrape_until(registry: &Registry, what: &str, done: impl Fn(&[Sample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if done(&scrape(registry)) {
            return;
        }
        assert!(Instant::now() < deadline, "never scraped {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn localhost() -> SocketAddr {
    testing::localhost()
}

/// A scrape of both ends of one echoed session: the door's counters, the
/// session's byte counts equal to what was written, its one path active,
/// and the close counted by reason once the client ended the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_reports_the_door_the_session_and_its_path() {
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::server(server_config, localhost()).unwrap();
    let mut server_metrics = Registry::default();
    server.register_metrics(&mut server_metrics, MetricsOptions::default());
    let accepting = tokio::spawn(testing::accept_loop(server.clone()));
    let client = Endpoint::client(localhost()).unwrap();
    let mut client_metrics = Registry::default();
    client.register_metrics(&mut client_metrics, MetricsOptions::default());

    let session = client
        .connect(server.local_addr(), "localhost", &client_config)
        .unwrap()
        .await
        .unwrap();
    let data = testing::pattern(10, 300_000);
    testing::echo(&session, data.clone()).await;
    // The echo stream carries a command byte, then the data.
    let written = (1 + data.len()) as f64;
    let echoed = data.len() as f64;

    let c = scrape(&client_metrics);
    let role = [("role", "client")];
    assert_eq!(one(&c, "kwik_sessions", &role), 1.0);
    assert_eq!(one(&c, "kwik_session_sent_bytes_total", &role), written);
    assert_eq!(one(&c, "kwik_session_received_bytes_total", &role), echoed);
    // A client endpoint has no door: nothing was accepted.
    assert_eq!(one(&c, "kwik_endpoint_handshakes_accepted_total", &[]), 0.0);

    let s = scrape(&server_metrics);
    assert!(one(&s, "kwik_endpoint_incoming_total", &[]) >= 1.0);
    assert!(one(&s, "kwik_endpoint_handshakes_accepted_total", &[]) >= 1.0);
    assert_eq!(one(&s, "kwik_endpoint_sessions", &[]), 1.0);
    assert_eq!(one(&s, "kwik_endpoint_half_open", &[]), 0.0);
    assert_eq!(one(&s, "kwik_metrics_sessions_omitted", &[]), 0.0);
    let role = [("role", "primary")];
    assert_eq!(one(&s, "kwik_sessions", &role), 1.0);
    assert_eq!(one(&s, "kwik_session_received_bytes_total", &role), written);
    assert_eq!(one(&s, "kwik_session_sent_bytes_total", &role), echoed);
    assert!(one(&s, "kwik_session_lanes_opened_total", &role) >= 1.0);
    assert!(one(&s, "kwik_session_rtt_seconds", &role) > 0.0);
    assert!(one(&s, "kwik_session_cwnd_bytes", &role) > 0.0);
    let session_label = find(&s, "kwik_session_sent_bytes_total", &role)[0]
        .label("session")
        .expect("a session label")
        .to_string();

    // Its one path: the connection to the client, active, having carried
    // at least the stream bytes (UDP payload adds QUIC's framing).
    let client_addr = client.local_addr().to_string();
    let path = [
        ("session", session_label.as_str()),
        ("path", "0"),
        ("address", client_addr.as_str()),
        ("primary", "true"),
    ];
    let state = find(&s, "kwik_path_state", &path);
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0].label("state"), Some("active"));
    assert_eq!(state[0].value, 1.0);
    assert!(one(&s, "kwik_path_received_bytes_total", &path) >= written);
    assert!(one(&s, "kwik_path_sent_bytes_total", &path) >= echoed);
    assert!(one(&s, "kwik_path_rtt_seconds", &path) > 0.0);
    assert_eq!(one(&s, "kwik_paths", &[("state", "active")]), 1.0);

    // Closing: the client counts a normal close of its own, the server the
    // peer application's.
    session.close(0, b"done").unwrap();
    drop(session);
    let closed_normally = |s: &[Sample]| {
        find(
            s,
            "kwik_endpoint_sessions_closed_total",
            &[("reason", "normal")],
        )
        .first()
        .is_some_and(|s| s.value == 1.0)
    };
    scrape_until(&client_metrics, "the client's close", closed_normally).await;
    scrape_until(&server_metrics, "the server's close", closed_normally).await;
    let s = scrape(&server_metrics);
    let other_closes: f64 = find(&s, "kwik_endpoint_sessions_closed_total", &[])
        .iter()
        .filter(|s| s.label("reason") != Some("normal"))
        .map(|s| s.value)
        .sum();
    assert_eq!(other_closes, 0.0);

    client.wait_idle().await;
    server.close(0, b"");
    assert_eq!(accepting.await.unwrap().len(), 1);
    // Once the session drained, its series are gone; the door's stay.
    server.wait_idle().await;
    let s = scrape(&server_metrics);
    assert!(find(&s, "kwik_session_sent_bytes_total", &[]).is_empty());
    assert!(one(&s, "kwik_endpoint_handshakes_accepted_total", &[]) >= 1.0);
}

/// Five sessions on a server whose metrics list at most two: the two with
/// the lowest handles get series, three are counted as left out, and the
/// aggregates still count all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_series_stop_at_the_cap_and_the_rest_is_counted() {
    const SESSIONS: usize = 5;
    const CAP: usize = 2;
    let (server_config, client_config) = dev::self_signed(["localhost"]);
    let server = Endpoint::server(server_config, localhost()).unwrap();
    let mut capped = Registry::default();
    let mut options = MetricsOptions::default();
    options.max_sessions = CAP;
    server.register_metrics(&mut capped, options);
    let mut all = Registry::default();
    server.register_metrics(&mut all, MetricsOptions::default());
    let mut endpoint_only = Registry::default();
    server.register_metrics(&mut endpoint_only, MetricsOptions::endpoint_only());
    let accepting = tokio::spawn(testing::accept_loop(server.clone()));

    let client = Endpoint::client(localhost()).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let connecting = client.connect(server.local_addr(), "localhost", &client_config);
        sessions.push(connecting.unwrap().await.unwrap());
    }
    // Every session established on the server side too.
    scrape_until(&all, "every session established", |s| {
        find(s, "kwik_sessions", &[("role", "primary")])
            .first()
            .is_some_and(|s| s.value == SESSIONS as f64)
    })
    .await;

    let session_labels = |samples: &[Sample]| {
        let mut labels: Vec<u64> = find(samples, "kwik_session_sent_bytes_total", &[])
            .iter()
            .map(|s| {
                s.label("session")
                    .expect("session")
                    .parse()
                    .expect("a handle")
            })
            .collect();
        labels.sort_unstable();
        labels
    };
    let everyone = session_labels(&scrape(&all));
    assert_eq!(everyone.len(), SESSIONS);

    let s = scrape(&capped);
    assert_eq!(session_labels(&s), everyone[..CAP]);
    for name in [
        "kwik_session_received_bytes_total",
        "kwik_session_rtt_seconds",
    ] {
        assert_eq!(find(&s, name, &[]).len(), CAP, "{name}");
    }
    assert_eq!(find(&s, "kwik_path_state", &[]).len(), CAP);
    let omitted = (SESSIONS - CAP) as f64;
    assert_eq!(one(&s, "kwik_metrics_sessions_omitted", &[]), omitted);
    assert_eq!(one(&s, "kwik_metrics_paths_omitted", &[]), omitted);
    assert_eq!(
        one(&s, "kwik_sessions", &[("role", "primary")]),
        SESSIONS as f64
    );
    assert_eq!(
        one(&s, "kwik_paths", &[("state", "active")]),
        SESSIONS as f64
    );

    let s = scrape(&endpoint_only);
    assert!(
        s.iter()
            .all(|s| !s.name.starts_with("kwik_session_") && !s.name.starts_with("kwik_path_")),
        "endpoint-only metrics list no session"
    );
    assert_eq!(
        one(&s, "kwik_metrics_sessions_omitted", &[]),
        SESSIONS as f64
    );

    for session in &sessions {
        session.close(0, b"").unwrap();
    }
    drop(sessions);
    client.wait_idle().await;
    server.close(0, b"");
    assert_eq!(accepting.await.unwrap().len(), SESSIONS);
}
