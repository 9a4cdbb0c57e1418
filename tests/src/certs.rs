//! Throw-away TLS identities for simulated servers.
//!
//! Tests need real TLS 1.3 handshakes (QUIC cannot run without them) but no
//! PKI: a self-signed certificate that the client config trusts directly is
//! enough.
//!
//! The certificate uses Ed25519 on purpose. Ed25519 keys and signatures have
//! a fixed size and its signatures are deterministic, so every handshake
//! flight has the same byte length on every run; with ECDSA the DER
//! signature length varies by a byte or two, which shifts serialization
//! times on shaped links by nanoseconds and breaks trace reproducibility.
//! The key itself is derived from a seed for the same reason.
//!
//! Configs are built with `rustls::crypto::ring::default_provider()`
//! explicitly (no process-wide default provider needed) and allow TLS 1.3
//! only, as QUIC requires.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key; the 32-byte seed
/// follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A self-signed Ed25519 certificate valid for a list of server names,
/// with its private key.
#[derive(Debug)]
pub struct DevCert {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl DevCert {
    /// A certificate for `names` with a key derived from a fixed seed.
    ///
    /// # Panics
    /// If certificate generation fails (invalid name).
    pub fn new(names: &[&str]) -> Self {
        Self::with_seed(names, 0)
    }

    /// A certificate for `names` with a key derived from `seed`: same
    /// inputs, byte-identical certificate.
    ///
    /// # Panics
    /// If certificate generation fails (invalid name).
    pub fn with_seed(names: &[&str], seed: u64) -> Self {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"kwik-sim dev cert".as_slice(), &seed.to_le_bytes()].concat(),
        );
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(digest.as_ref());
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
            .expect("Ed25519 PKCS#8 key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate names");
        params.serial_number = Some(rcgen::SerialNumber::from(seed.wrapping_add(1)));
        let cert = params
            .self_signed(&key_pair)
            .expect("self-signed certificate");
        DevCert {
            cert: cert.der().clone(),
            key,
        }
    }

    /// The DER certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A copy of the private key.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// A root store holding only this certificate.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("trust anchor");
        roots
    }

    /// A rustls server config presenting this certificate, TLS 1.3 only,
    /// offering `alpn` protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 supported by ring provider")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key_der())
            .expect("certificate matches key");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// A rustls client config trusting only this certificate, TLS 1.3
    /// only, offering `alpn` protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 supported by ring provider")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// [`server_config`](Self::server_config) wrapped for quinn-proto.
    pub fn quic_server_config(&self, alpn: &[&[u8]]) -> QuicServerConfig {
        QuicServerConfig::try_from(self.server_config(alpn))
            .expect("ring provider has the QUIC initial suite")
    }

    /// [`client_config`](Self::client_config) wrapped for quinn-proto.
    pub fn quic_client_config(&self, alpn: &[&[u8]]) -> QuicClientConfig {
        QuicClientConfig::try_from(self.client_config(alpn))
            .expect("ring provider has the QUIC initial suite")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
