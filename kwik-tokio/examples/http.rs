//! HTTP/1.1 over kwik, with hyper.
//!
//! ```text
//! cargo run --release -p kwik-tokio --example http
//! ```
//!
//! Starts a server and a client in this one process on 127.0.0.1. Over one
//! kwik session the client sends 20 concurrent `GET`s of 1 MiB and a 1 MiB
//! `POST`, each on its own bidirectional stream (one HTTP/1.1 connection
//! per stream: see `http_app` for the contract), checks every body byte
//! for byte, and checks that every connection ended without error on both
//! sides. Exits with 0 if all went well.

mod http_app;

use std::process::ExitCode;

const GETS: usize = 20;
const SIZE: usize = 1 << 20;

#[tokio::main]
async fn main() -> ExitCode {
    match http_app::demo(GETS, SIZE).await {
        Ok(report) => {
            let failed: Vec<_> = report
                .server
                .iter()
                .filter_map(|r| r.as_ref().err())
                .collect();
            println!(
                "{} responses, {} body bytes, all verified, in {:?}",
                report.responses, report.bytes, report.elapsed
            );
            println!(
                "server: {} connections, {} ended with an error",
                report.server.len(),
                failed.len()
            );
            for e in &failed {
                eprintln!("server connection error: {e:?}");
            }
            if failed.is_empty() && report.server.len() == report.responses {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("http demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
