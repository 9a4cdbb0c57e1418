//! End-to-end tests of the `kwik` binary: a primary and two secondaries as
//! separate processes on loopback, and every bad input the command reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A primary and two secondaries serving one directory.
struct Cluster {
    dir: tempfile::TempDir,
    primary: SocketAddr,
    secondaries: [SocketAddr; 2],
    _servers: Vec<Server>,
}

impl Cluster {
    fn start(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("files");
        std::fs::create_dir(&served).unwrap();
        for (name, content) in files {
            std::fs::write(served.join(name), content).unwrap();
        }
        let key = dir.path().join("kwik.key");
        let (served, key) = (served.to_str().unwrap(), key.to_str().unwrap());
        let secondaries = [free_addr(), free_addr()];
        let primary = free_addr();
        let mut servers = Vec::new();
        for s in secondaries {
            let listen = s.to_string();
            servers.push(spawn_quiet(&[
                "serve",
                "--role",
                "secondary",
                "--listen",
                &listen,
                "--dir",
                served,
                "--key",
                key,
            ]));
        }
        let listen = primary.to_string();
        let (s0, s1) = (secondaries[0].to_string(), secondaries[1].to_string());
        servers.push(spawn_quiet(&[
            "serve",
            "--role",
            "primary",
            "--listen",
            &listen,
            "--dir",
            served,
            "--key",
            key,
            "--secondary",
            &s0,
            "--secondary",
            &s1,
        ]));
        for addr in secondaries.iter().chain([&primary]) {
            wait_ready(*addr);
        }
        Self {
            dir,
            primary,
            secondaries,
            _servers: servers,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("kwik-dev-ca.pem")
    }

    fn url(&self, path: &str) -> String {
        format!("kwik://{}/{path}", self.primary)
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kwik get PATH -o out/NAME --ca CA` with `extra` arguments.
    fn get(&self, path: &str, name: &str, extra: &[&str]) -> Output {
        let (url, out, ca) = (self.url(path), self.out(name), self.ca());
        let mut args = vec![
            "get",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ];
        args.extend(extra);
        kwik(&args)
    }
}

#[test]
fn fetches_64_mib_from_a_primary_and_two_secondaries() {
    let data = pattern(64 << 20);
    let cluster = Cluster::start(&[("big.bin", &data)]);
    let (a0, a1) = (
        cluster.secondaries[0].to_string(),
        cluster.secondaries[1].to_string(),
    );
    let out = cluster.get(
        "big.bin",
        "big.out",
        &["--allow", &a0, "--allow", &a1, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.trim().lines().count(), 1, "{line}");
    assert!(line.contains(&format!("\"bytes\":{}", 64 << 20)), "{line}");
    assert!(line.contains("\"sha256_ok\":true"), "{line}");
    assert!(line.contains("\"servers\":3"), "{line}");
    assert!(line.contains("\"mib_s\":"), "{line}");
    let got = std::fs::read(cluster.out("big.out")).unwrap();
    assert!(got == data, "downloaded bytes differ");
}

#[test]
fn refused_path_is_reported_and_the_download_succeeds() {
    let data = pattern(8 << 20);
    let cluster = Cluster::start(&[("f.bin", &data)]);
    let allowed = cluster.secondaries[0].to_string();
    let out = cluster.get("f.bin", "f.out", &["--allow", &allowed]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let refused = cluster.secondaries[1].to_string();
    let line = table
        .lines()
        .find(|l| l.contains(&refused))
        .unwrap_or_else(|| panic!("no line for {refused}: {table}"));
    assert!(line.contains("refused"), "{table}");
    assert!(table.contains("OK"), "{table}");
    assert!(std::fs::read(cluster.out("f.out")).unwrap() == data);
}

#[test]
fn bad_requests_to_a_primary() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let cluster = Cluster::start(&[("small", b"small")]);
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        cluster.dir.path().join("files/escape"),
    )
    .unwrap();

    // Missing file: the primary's typed status, no output file.
    let out = cluster.get("missing.bin", "missing.out", &[]);
    assert_fails_with(&out, &["NOT_FOUND"]);
    assert!(!cluster.out("missing.out").exists());

    // Path traversal: `..`, an absolute path, a symbolic link leading out.
    for path in ["../kwik.key", "/etc/passwd", "escape"] {
        let out = cluster.get(path, "traversal.out", &[]);
        assert_fails_with(&out, &["FORBIDDEN"]);
        assert!(!cluster.out("traversal.out").exists());
    }

    // A certificate the client does not trust: another development CA.
    let other = tempfile::tempdir().unwrap();
    let other_addr = free_addr().to_string();
    let other_key = other.path().join("k");
    let _other = spawn_quiet(&[
        "serve",
        "--role",
        "secondary",
        "--listen",
        &other_addr,
        "--dir",
        other.path().to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    wait_ready(other_addr.parse().unwrap());
    let wrong_ca = other.path().join("kwik-dev-ca.pem");
    let (url, dest) = (cluster.url("small"), cluster.out("tls.out"));
    let out = kwik(&[
        "get",
        &url,
        "-o",
        dest.to_str().unwrap(),
        "--ca",
        wrong_ca.to_str().unwrap(),
    ]);
    assert_fails_with(&out, &["TLS failure"]);

    // The same file downloads with the right CA.
    let out = cluster.get("small", "small.out", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(cluster.out("small.out")).unwrap(), b"small");
}

#[test]
fn unknown_host_is_a_resolution_failure() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let out = kwik(&[
        "get",
        "kwik://no-such-host.invalid:4433/x",
        "-o",
        dest.to_str().unwrap(),
        "--insecure",
    ]);
    assert_fails_with(&out, &["cannot resolve host no-such-host.invalid"]);
}

#[test]
fn unreadable_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let key = key.to_str().unwrap();
    let missing = dir.path().join("missing");
    let listen = free_addr().to_string();
    for role in ["primary", "secondary"] {
        let out = kwik(&[
            "serve",
            "--role",
            role,
            "--listen",
            &listen,
            "--dir",
            missing.to_str().unwrap(),
            "--key",
            key,
        ]);
        assert_fails_with(&out, &["cannot read directory"]);
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = kwik(&[
        "serve",
        "--role",
        "primary",
        "--listen",
        &listen,
        "--dir",
        file.to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_fails_with(&out, &["not a directory"]);
}

#[test]
fn a_new_key_file_is_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let listen = free_addr();
    let server = spawn_quiet(&[
        "serve",
        "--role",
        "secondary",
        "--listen",
        &listen.to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    wait_ready(listen);
    drop(server);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(Path::new(&dir.path().join("kwik-dev-ca.pem")).exists());
}

// ----- --metrics ------------------------------------------------------------

/// A loopback TCP address nothing listens on right now.
fn free_tcp_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET path` over a fresh connection: the status code, the headers
/// (lower-cased names) and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// `(name, labels, value)` of every sample of an OpenMetrics text, checking
/// that every line is a comment or `name{labels} value` with a float value
/// and that the text ends with `# EOF`.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker: {text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => line.split_once(' ').expect("name and value"),
        };
        let value = rest.split_whitespace().next().expect("a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

fn metric(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|s| s.2)
}

#[test]
fn serve_metrics_over_http_count_the_sessions_served() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("files");
    std::fs::create_dir(&served).unwrap();
    let data = pattern(1 << 20);
    std::fs::write(served.join("f.bin"), &data).unwrap();
    let key = dir.path().join("kwik.key");
    let primary = free_addr();
    let metrics = free_tcp_addr();
    let _server = spawn_quiet(&[
        "serve",
        "--role",
        "primary",
        "--listen",
        &primary.to_string(),
        "--dir",
        served.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--metrics",
        &metrics.to_string(),
    ]);
    // Answering a request means the metrics listener is up too (it is
    // bound before the server accepts anything).
    wait_ready(primary);
    let out_file = dir.path().join("f.out");
    let out = kwik(&[
        "get",
        &format!("kwik://{primary}/f.bin"),
        "-o",
        out_file.to_str().unwrap(),
        "--ca",
        dir.path().join("kwik-dev-ca.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&out_file).unwrap() == data);

    let (status, headers, body) = http_get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        content_type,
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let samples = parse_metrics(&body);
    // What an outside checker does with each kwik sample line: the value is
    // the first word after the labels (or after the name).
    for line in body.lines().filter(|l| l.starts_with("kwik_")) {
        let rest = match line.rfind('}') {
            Some(close) => &line[close + 1..],
            None => line.split_once(char::is_whitespace).expect("a value").1,
        };
        let word = rest.split_whitespace().next().expect("a value");
        assert!(word.parse::<f64>().is_ok(), "{line:?}");
    }
    let kwik_samples = samples.iter().filter(|s| s.0.starts_with("kwik_")).count();
    assert!(kwik_samples >= 10, "{body}");
    // At least one readiness probe and the download each had a session.
    let accepted = metric(&samples, "kwik_endpoint_handshakes_accepted_total", "");
    assert!(accepted.is_some_and(|n| n >= 2.0), "{body}");
    assert!(metric(&samples, "kwik_endpoint_incoming_total", "").is_some_and(|n| n >= 2.0));

    // The sessions' ends are counted once the server has seen them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(metrics, "/metrics");
        let closed: f64 = parse_metrics(&body)
            .iter()
            .filter(|s| s.0 == "kwik_endpoint_sessions_closed_total")
            .map(|s| s.2)
            .sum();
        if closed >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "closes never counted: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, _, _) = http_get(metrics, "/other");
    assert_eq!(status, 404);
}

#[test]
fn an_unusable_metrics_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = kwik(&[
        "serve",
        "--role",
        "primary",
        "--listen",
        &free_addr().to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
        "--key",
        dir.path().join("k").to_str().unwrap(),
        "--metrics",
        &taken_addr,
    ]);
    // The key and the development CA are created first (and say so).
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    let last = err.trim().lines().last().unwrap_or_default();
    let expected = format!("cannot serve metrics on {taken_addr}");
    assert!(last.contains(&expected), "{expected:?} not in: {err}");
    drop(taken);
}

#[test]
fn qlog_dir_gets_one_trace_per_connection() {
    let data = pattern(2 << 20);
    let cluster = Cluster::start(&[("q.bin", &data)]);
    let allowed = cluster.secondaries[0].to_string();
    let qlogs = cluster.dir.path().join("qlog");
    let out = cluster.get(
        "q.bin",
        "q.out",
        &["--allow", &allowed, "--qlog-dir", qlogs.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(cluster.out("q.out")).unwrap() == data);
    let mut traces: Vec<_> = std::fs::read_dir(&qlogs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    traces.sort();
    // The primary connection and the one secondary path that was allowed.
    assert_eq!(traces.len(), 2, "{traces:?}");
    for trace in &traces {
        let name = trace.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("client-") && name.ends_with(".sqlog"),
            "{name}"
        );
        let text = std::fs::read_to_string(trace).unwrap();
        // JSON-SEQ: records start with the RS character; the header names
        // the format, then packets follow.
        let records: Vec<&str> = text
            .split('\u{1e}')
            .filter(|r| !r.trim().is_empty())
            .collect();
        assert!(records[0].contains("qlog_version"), "{}", records[0]);
        assert!(
            records.iter().any(|r| r.contains("packet_received")),
            "{name}: {} records, no packet_received",
            records.len()
        );
    }
}
