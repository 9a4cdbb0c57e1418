//! mDNS discovery: a service registered with mdns-sd is found by a browse.
//!
//! Multicast must not leave this machine, so the real check runs in a
//! private network namespace holding only a loopback interface: the test
//! re-runs this test binary under `unshare --net`. Where that is not
//! allowed, or multicast does not work there, the test prints
//! `skipped: <reason>` and passes; when discovery works, it must find
//! exactly what was registered.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use kwik_discovery::{Candidate, Discovery, DiscoveryError, Mdns};
use mdns_sd::{ServiceDaemon, ServiceInfo};

/// Printed by the namespace's shell once the namespace is ready.
const READY: &str = "kwik-netns-ready";

#[test]
fn mdns_browse_finds_registered_services() {
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "ip link set lo up && ip link set lo multicast on && echo {READY} && \
         exec \"$0\" --ignored --exact mdns_inside_a_private_namespace --nocapture --test-threads 1"
    );
    let output = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .arg(&exe)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => return println!("skipped: cannot run unshare: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stdout.contains(READY) {
        return println!("skipped: no private network namespace: {}", stderr.trim());
    }
    assert!(
        output.status.success(),
        "the check in the namespace failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
    // libtest may print the test's own lines after "test NAME ... ".
    let said = |marker: &str| {
        stdout
            .lines()
            .find_map(|l| l.find(marker).map(|at| l[at..].to_string()))
    };
    match said("skipped:") {
        Some(line) => println!("{line}"),
        None => {
            let found = said("mdns: found");
            println!("{}", found.expect("the inner test reports what it found"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by mdns_browse_finds_registered_services in a private network namespace"]
async fn mdns_inside_a_private_namespace() {
    // Never multicast on a real network: run only where loopback is the
    // only interface (the private namespace), even when asked directly.
    // (/proc/net is the calling process's network namespace; /sys is not.)
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    if interfaces != ["lo"] {
        return println!("skipped: interfaces other than loopback here: {interfaces:?}");
    }
    // The namespace is private: the standard port is free.
    let port = 5353;
    let responder = match ServiceDaemon::new_with_port(port) {
        Ok(daemon) => daemon,
        Err(e) => return println!("skipped: mDNS daemon: {e}"),
    };
    let with_txt = ServiceInfo::new(
        "_kwik._udp.local.",
        "secondary-1",
        "kwik-s1.local.",
        "127.0.0.1",
        4434,
        &[("server_name", "s1.example.test"), ("region", "lab")][..],
    )
    .unwrap();
    let bare = ServiceInfo::new(
        "_kwik._udp.local.",
        "secondary-2",
        "kwik-s2.local.",
        "127.0.0.2",
        4435,
        None,
    )
    .unwrap();
    // Another service type, which the browse must not return.
    let other = ServiceInfo::new(
        "_other._udp.local.",
        "other",
        "other.local.",
        "127.0.0.3",
        4436,
        None,
    )
    .unwrap();
    for info in [with_txt, bare, other] {
        if let Err(e) = responder.register(info) {
            return println!("skipped: mDNS register: {e}");
        }
    }

    let source: Box<dyn Discovery> = Box::new(
        Mdns::new("_kwik._udp.local")
            .unwrap()
            .port(port)
            .browse_for(Duration::from_secs(3)),
    );
    let found = source.discover().await;
    let _ = responder.shutdown();
    let found = match found {
        Ok(found) => found,
        Err(DiscoveryError::MdnsUnavailable { message }) => {
            return println!("skipped: mDNS unavailable: {message}");
        }
        Err(e) => panic!("unexpected error: {e:?}"),
    };
    if found.is_empty() {
        return println!("skipped: no mDNS answer within 3 s (multicast not working here)");
    }
    println!("mdns: found {found:?}");
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(
        found,
        [
            Candidate::new(addr("127.0.0.1:4434"), "s1.example.test").with_region("lab"),
            Candidate::new(addr("127.0.0.2:4435"), "kwik-s2"),
        ]
    );
}

#[test]
fn service_types_are_checked() {
    assert_eq!(
        Mdns::new("_kwik._udp.local").unwrap().service_type(),
        "_kwik._udp.local."
    );
    for bad in [
        "",
        "kwik",
        "_kwik._udp.example.com.",
        "_kwik._sctp.local.",
        "._udp.local.",
    ] {
        assert!(
            matches!(Mdns::new(bad), Err(DiscoveryError::BadName { .. })),
            "{bad:?}"
        );
    }
}
