//! `kwik serve --role primary --discover`: a primary finding its secondary
//! in a list file and a client fetching through both, and every way
//! discovery can fail at start-up.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A secondary, and a primary that finds it in a list file, started with
/// `extra` arguments, both ready; the 8 MiB file `f.bin` they serve.
struct Listed {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    primary: SocketAddr,
    secondary: SocketAddr,
    primary_log: std::path::PathBuf,
    _servers: [Server; 2],
}

fn listed_cluster(extra: &[&str]) -> Listed {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("files");
    std::fs::create_dir(&served).unwrap();
    let data = pattern(8 << 20);
    std::fs::write(served.join("f.bin"), &data).unwrap();
    let key = dir.path().join("kwik.key");
    let (served_s, key_s) = (served.to_str().unwrap(), key.to_str().unwrap());

    let secondary = free_addr();
    let secondary_server = spawn(
        &[
            "serve",
            "--role",
            "secondary",
            "--listen",
            &secondary.to_string(),
            "--dir",
            served_s,
            "--key",
            key_s,
        ],
        Some(&dir.path().join("secondary.log")),
    );
    // The development certificate names the listen IP.
    let list = dir.path().join("secondaries.list");
    std::fs::write(
        &list,
        format!("# found by discovery\n{secondary} 127.0.0.1 priority=1 region=lab\n"),
    )
    .unwrap();
    let primary = free_addr();
    let primary_log = dir.path().join("primary.log");
    let spec = format!("static:{}", list.display());
    let listen = primary.to_string();
    let mut args = vec![
        "serve",
        "--role",
        "primary",
        "--listen",
        &listen,
        "--dir",
        served_s,
        "--key",
        key_s,
        "--discover",
        &spec,
    ];
    args.extend_from_slice(extra);
    let primary_server = spawn(&args, Some(&primary_log));
    wait_ready(secondary);
    wait_ready(primary);
    Listed {
        dir,
        data,
        primary,
        secondary,
        primary_log,
        _servers: [secondary_server, primary_server],
    }
}

impl Listed {
    /// Fetches `f.bin` with `kwik get --json`; the JSON line once the file
    /// arrived intact.
    fn fetch(&self) -> String {
        let out_file = self.dir.path().join("f.out");
        let out = kwik(&[
            "get",
            &format!("kwik://{}/f.bin", self.primary),
            "-o",
            out_file.to_str().unwrap(),
            "--ca",
            self.dir.path().join("kwik-dev-ca.pem").to_str().unwrap(),
            "--allow",
            &self.secondary.to_string(),
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(line.contains("\"sha256_ok\":true"), "{line}");
        assert!(std::fs::read(&out_file).unwrap() == self.data);
        line
    }

    fn primary_log(&self) -> String {
        std::fs::read_to_string(&self.primary_log).unwrap()
    }
}

#[test]
fn a_primary_uses_the_secondary_listed_in_a_static_file() {
    let cluster = listed_cluster(&[]);
    let line = cluster.fetch();
    // The primary and the discovered secondary both served the session.
    assert!(line.contains("\"servers\":2"), "{line}");
    let log = cluster.primary_log();
    assert!(log.contains("found 1 secondary"), "{log}");
    assert!(
        log.contains(&format!(
            "with secondaries [{}=127.0.0.1]",
            cluster.secondary
        )),
        "{log}"
    );
}

#[test]
fn with_autoscale_the_list_is_a_pool_of_candidates() {
    let cluster = listed_cluster(&["--autoscale"]);
    // A short fetch is over before any demand could call for a secondary:
    // the primary serves it alone, and adds nobody up front.
    let line = cluster.fetch();
    assert!(line.contains("\"servers\":1"), "{line}");
    let log = cluster.primary_log();
    assert!(
        log.contains(&format!(
            "autoscaling over [{}=127.0.0.1]",
            cluster.secondary
        )),
        "{log}"
    );
    assert!(log.contains("with secondaries []"), "{log}");
}

#[test]
fn discovery_failures_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (dir_s, key) = (
        dir.path().to_str().unwrap(),
        dir.path().join("k").to_str().unwrap().to_string(),
    );
    let listen = free_addr().to_string();
    let serve = |role: &str, extra: &[&str]| {
        let mut args = vec![
            "serve", "--role", role, "--listen", &listen, "--dir", dir_s, "--key", &key,
        ];
        args.extend(extra);
        kwik(&args)
    };

    // A malformed list file: the file and the line.
    let list = dir.path().join("bad.list");
    std::fs::write(&list, "127.0.0.1:4434 a\n127.0.0.1 b\n").unwrap();
    let spec = format!("static:{}", list.display());
    let out = serve("primary", &["--discover", &spec]);
    assert_fails_with(
        &out,
        &["--discover", "bad.list, line 2", "expected an address"],
    );
    // ... even when secondaries are given explicitly: it is a mistake.
    let out = serve(
        "primary",
        &["--secondary", "127.0.0.1:4434", "--discover", &spec],
    );
    assert_fails_with(&out, &["bad.list, line 2"]);

    // Malformed specifications and misplaced options.
    let out = serve("primary", &["--discover", "dns:example.com"]);
    assert_fails_with(&out, &["unknown kind"]);
    let out = serve("secondary", &["--discover", "mdns:"]);
    assert_fails_with(&out, &["--discover is for primaries"]);
    let out = serve("secondary", &["--autoscale"]);
    assert_fails_with(&out, &["--autoscale is for primaries"]);
    let out = serve("primary", &["--dns-server", "127.0.0.1:53"]);
    assert_fails_with(&out, &["--dns-server is for --discover srv:NAME"]);

    // A name server that never answers, and nothing else to serve with.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = serve(
        "primary",
        &[
            "--discover",
            "srv:_kwik._udp.example.test",
            "--dns-server",
            &dns,
            "--discover-timeout",
            "0.5",
        ],
    );
    assert_fails_with(
        &out,
        &[
            "--discover srv:_kwik._udp.example.test",
            "timed out after 0.5 s",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // With an explicit secondary, the same failure is a warning.
    let log = dir.path().join("primary.log");
    let primary = spawn(
        &[
            "serve",
            "--role",
            "primary",
            "--listen",
            &listen,
            "--dir",
            dir_s,
            "--key",
            &key,
            "--secondary",
            "127.0.0.1:4434",
            "--discover",
            "srv:_kwik._udp.example.test",
            "--dns-server",
            &dns,
            "--discover-timeout",
            "0.5",
        ],
        Some(&log),
    );
    wait_ready(listen.parse().unwrap());
    drop(primary);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("kwik: warning: --discover srv:_kwik._udp.example.test"),
        "{text}"
    );
    assert!(
        text.contains("with secondaries [127.0.0.1:4434=127.0.0.1]"),
        "{text}"
    );
}

/// A DNS server on loopback answering for `example.test.`: the SRV record
/// `_kwik._udp.example.test. SRV 0 0 PORT s1.example.test.` and
/// `s1.example.test. A 127.0.0.1`. It runs on `runtime`'s threads until
/// the returned handle is dropped.
fn dns_server(
    runtime: &tokio::runtime::Runtime,
    port: u16,
) -> (
    SocketAddr,
    hickory_server::ServerFuture<hickory_server::authority::Catalog>,
) {
    use hickory_server::ServerFuture;
    use hickory_server::authority::{Catalog, ZoneType};
    use hickory_server::proto::rr::rdata::{A, SOA, SRV};
    use hickory_server::proto::rr::{LowerName, Name, RData, Record};
    use hickory_server::store::in_memory::InMemoryAuthority;

    let name = |s: &str| Name::from_ascii(s).unwrap();
    let origin = name("example.test.");
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let records = [
        (
            "example.test.",
            RData::SOA(SOA::new(
                name("ns.example.test."),
                name("admin.example.test."),
                1,
                3600,
                600,
                86400,
                60,
            )),
        ),
        (
            "_kwik._udp.example.test.",
            RData::SRV(SRV::new(0, 0, port, name("s1.example.test."))),
        ),
        ("s1.example.test.", RData::A(A([127, 0, 0, 1].into()))),
    ];
    for (owner, data) in records {
        assert!(zone.upsert_mut(Record::from_rdata(name(owner), 60, data), 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![std::sync::Arc::new(zone)]);
    runtime.block_on(async move {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut server = ServerFuture::new(catalog);
        server.register_socket(udp);
        (addr, server)
    })
}

#[test]
fn a_primary_uses_the_secondary_named_by_dns_srv() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("files");
    std::fs::create_dir(&served).unwrap();
    let data = pattern(4 << 20);
    std::fs::write(served.join("f.bin"), &data).unwrap();
    let key = dir.path().join("kwik.key");
    let (served_s, key_s) = (served.to_str().unwrap(), key.to_str().unwrap());

    let secondary = free_addr();
    let (dns, _dns_server) = dns_server(&runtime, secondary.port());
    let dns = dns.to_string();
    // The SRV target is the name the secondary's certificate must carry.
    let _secondary = spawn(
        &[
            "serve",
            "--role",
            "secondary",
            "--listen",
            &secondary.to_string(),
            "--dir",
            served_s,
            "--key",
            key_s,
            "--tls-name",
            "s1.example.test",
        ],
        Some(&dir.path().join("secondary.log")),
    );
    let primary = free_addr();
    let primary_log = dir.path().join("primary.log");
    let _primary = spawn(
        &[
            "serve",
            "--role",
            "primary",
            "--listen",
            &primary.to_string(),
            "--dir",
            served_s,
            "--key",
            key_s,
            "--discover",
            "srv:_kwik._udp.example.test",
            "--dns-server",
            &dns,
        ],
        Some(&primary_log),
    );
    wait_ready(secondary);
    wait_ready(primary);

    let out_file = dir.path().join("f.out");
    let out = kwik(&[
        "get",
        &format!("kwik://{primary}/f.bin"),
        "-o",
        out_file.to_str().unwrap(),
        "--ca",
        dir.path().join("kwik-dev-ca.pem").to_str().unwrap(),
        "--allow",
        &secondary.to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.contains("\"servers\":2"), "{line}");
    assert!(std::fs::read(&out_file).unwrap() == data);
    let log = std::fs::read_to_string(&primary_log).unwrap();
    assert!(
        log.contains(&format!("with secondaries [{secondary}=s1.example.test]")),
        "{log}"
    );
}
