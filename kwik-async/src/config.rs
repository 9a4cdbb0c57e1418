//! Building kwik's client and server configurations from certificates.
//!
//! kwik needs TLS 1.3 (QUIC requires it) and sets the ALPN itself; these
//! helpers fix the crypto provider to ring (already in the tree) so that no
//! process-wide default provider has to be installed first.

use std::sync::Arc;

use kwik_core::{ClientConfig, ConfigError, ServerConfig};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError(e.to_string())
}

/// A server configuration presenting `cert_chain` (leaf first) with `key`.
///
/// # Errors
/// If the key does not match the certificate or is of an unsupported type.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, ConfigError> {
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(config_error)?;
    ServerConfig::new(tls)
}

/// A client configuration trusting the certificate authorities in `roots`.
///
/// # Errors
/// If the TLS configuration cannot be used for QUIC.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, ConfigError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConfig::new(tls)
}

/// A client configuration trusting exactly the given certificates (for
/// self-signed servers).
///
/// # Errors
/// If a certificate cannot be parsed as a trust anchor.
pub fn client_config_trusting(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(config_error)?;
    }
    client_config(roots)
}

/// Development helpers: never use these certificates in production.
pub mod dev {
    use kwik_core::{ClientConfig, ServerConfig};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A fresh self-signed certificate for `names` (e.g. `["localhost"]`)
    /// and its private key.
    ///
    /// # Panics
    /// If a name is not a valid DNS name or IP address.
    pub fn self_signed_cert<I, S>(names: I) -> (CertificateDer<'static>, PrivateKeyDer<'static>)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("valid certificate names");
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        (certified.cert.der().clone(), PrivateKeyDer::Pkcs8(key))
    }

    /// Configurations for a server presenting a fresh self-signed
    /// certificate for `names`, and for a client trusting only it.
    ///
    /// # Panics
    /// If a name is not a valid DNS name or IP address.
    pub fn self_signed<I, S>(names: I) -> (ServerConfig, ClientConfig)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let (cert, key) = self_signed_cert(names);
        let server = super::server_config(vec![cert.clone()], key).expect("fresh key matches");
        let client = super::client_config_trusting([cert]).expect("fresh certificate parses");
        (server, client)
    }
}
