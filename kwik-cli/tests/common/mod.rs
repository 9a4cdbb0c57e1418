//! What the subprocess tests of the `kwik` binary share: starting and
//! stopping servers, waiting until they answer, running the command and
//! reading its verdict.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const KWIK: &str = env!("CARGO_BIN_EXE_kwik");

/// A server process, killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `len` bytes of a deterministic pattern (xorshift64*).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Runs `kwik ARGS` to its end.
pub fn kwik(args: &[&str]) -> Output {
    Command::new(KWIK).args(args).output().unwrap()
}

/// What a run printed on stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command failed with exactly one line on stderr containing every
/// needle.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Starts `kwik ARGS` as a server, its stderr going to `log` (or nowhere).
pub fn spawn(args: &[&str], log: Option<&Path>) -> Server {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Server(
        Command::new(KWIK)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Starts `kwik ARGS` as a server whose stderr goes nowhere.
pub fn spawn_quiet(args: &[&str]) -> Server {
    spawn(args, None)
}

/// Retries a connection to `addr` until its server answers: a primary with
/// a refusal of the probe path, a secondary by completing the handshake
/// (and then not answering the request).
pub fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("kwik://{addr}/.kwik-ready-probe");
    // Never written: the probe path does not exist.
    let dest = std::env::temp_dir().join("kwik-ready-probe");
    loop {
        let out = kwik(&[
            "get",
            &url,
            "-o",
            dest.to_str().unwrap(),
            "--insecure",
            "--timeout",
            "0.2",
        ]);
        let err = stderr(&out);
        if err.contains("NOT_FOUND") || err.contains("no response to the request") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never became ready: {err}"
        );
    }
}
