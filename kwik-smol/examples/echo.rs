//! Echo over kwik on smol.
//!
//! ```text
//! cargo run -p kwik-smol --example smol-echo   # both ends in one process
//! cargo run -p kwik-smol --example smol-echo -- --server 127.0.0.1:4433
//! cargo run -p kwik-smol --example smol-echo -- --client 127.0.0.1:4433 hello kwik
//! ```
//!
//! The server makes a throw-away self-signed certificate for `localhost` and
//! writes it to the temp directory, where a `--client` reads it to trust it.
//!
//! # Application contract
//!
//! One kwik session, no secondary paths. For each message the client opens
//! a **client-initiated bidirectional logical stream**, writes the
//! message's bytes and finishes its sending half; the server writes back
//! every byte it reads from that stream, in order, on the same stream, and
//! finishes once it read the FIN. The client checks nothing but prints
//! what came back (an echo shorter than 1 MiB). Nothing else is sent: no
//! unidirectional streams, no Raw. The client closes the session with
//! application code 0 once every echo came back; a `--server` keeps
//! serving. There is no path-token key: a single server needs none.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;

use kwik_smol::rustls::pki_types::CertificateDer;
use kwik_smol::{ClientConfig, Endpoint, client_config_trusting, dev, server_config};

fn cert_path() -> PathBuf {
    std::env::temp_dir().join("kwik-echo-cert.der")
}

fn main() -> Result<(), Box<dyn Error>> {
    smol::block_on(run())
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--server") => {
            let addr = args
                .get(1)
                .map_or("127.0.0.1:4433", String::as_str)
                .parse()?;
            let (server, _) = start_server(addr)?;
            println!("echo server on {}", server.local_addr());
            serve(server).await;
        }
        Some("--client") => {
            let addr = args
                .get(1)
                .ok_or("--client needs the server's ADDR")?
                .parse()?;
            let cert = CertificateDer::from(std::fs::read(cert_path())?);
            run_client(addr, &client_config_trusting([cert])?, &args[2..]).await?;
        }
        _ => {
            let (server, cert) = start_server("127.0.0.1:0".parse()?)?;
            let addr = server.local_addr();
            smol::spawn(serve(server.clone())).detach();
            run_client(addr, &client_config_trusting([cert])?, &args).await?;
            server.close(0, b"bye");
            server.wait_idle().await;
        }
    }
    Ok(())
}

fn start_server(addr: SocketAddr) -> Result<(Endpoint, CertificateDer<'static>), Box<dyn Error>> {
    let (cert, key) = dev::self_signed_cert(["localhost"]);
    std::fs::write(cert_path(), &cert)?;
    let endpoint = Endpoint::server(server_config(vec![cert.clone()], key)?, addr)?;
    Ok((endpoint, cert))
}

/// Accepts sessions and echoes every bidirectional stream back.
async fn serve(endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        smol::spawn(async move {
            let Ok(session) = incoming.accept().await else {
                return;
            };
            println!("session {} from {}", session.id(), session.remote_address());
            while let Ok((mut send, mut recv)) = session.accept_bi().await {
                smol::spawn(async move {
                    // SendStream and RecvStream are futures-io AsyncWrite/AsyncRead.
                    if smol::io::copy(&mut recv, &mut send).await.is_ok() {
                        let _ = send.finish();
                    }
                })
                .detach();
            }
            println!("session {} ended: {}", session.id(), session.closed().await);
        })
        .detach();
    }
}

/// Sends each message on its own stream, concurrently, and prints the echoes.
async fn run_client(
    addr: SocketAddr,
    config: &ClientConfig,
    messages: &[String],
) -> Result<(), Box<dyn Error>> {
    let default = ["hello".to_owned(), "kwik".to_owned()];
    let messages = if messages.is_empty() {
        &default[..]
    } else {
        messages
    };
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
    let session = endpoint.connect(addr, "localhost", config)?.await?;
    println!("connected: session {}", session.id());
    let mut tasks = Vec::new();
    for message in messages {
        let (session, message) = (session.clone(), message.clone());
        tasks.push(smol::spawn(async move {
            let (mut send, mut recv) = session.open_bi().await?;
            send.write_all(message.as_bytes()).await?;
            send.finish()?;
            let echo = recv.read_to_end(1 << 20).await?;
            println!("echo: {}", String::from_utf8_lossy(&echo));
            Ok::<_, Box<dyn Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e as Box<dyn Error>)?;
    }
    session.close(0, b"done")?;
    endpoint.wait_idle().await;
    Ok(())
}
