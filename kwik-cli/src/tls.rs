//! Key material: the path-token key, server certificates, and what a
//! client trusts.
//!
//! Without `--tls-cert`, servers use a development CA created on first use
//! next to the token key: its certificate (`--dev-ca`, public, given to
//! clients with `--ca`) and its private key (same name with `.key`, mode
//! 0600). Every server issues itself a fresh leaf from it at start, so a
//! primary and its secondaries sharing a directory are trusted through one
//! file. Files are created with an atomic no-clobber rename, so processes
//! started together agree on one key and one CA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kwik_tokio::rustls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Reads the 32-byte token key (64 hex digits) from `path`, creating the
/// file with a fresh random key (mode 0600) if it does not exist.
pub fn token_key(path: &Path) -> Result<[u8; 32], String> {
    if !path.exists() {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for a token key: {e}"))?;
        let text = format!("{}\n", crate::protocol::hex(&key));
        if create_new(path, text.as_bytes(), 0o600)? {
            eprintln!("kwik: created token key {}", path.display());
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token key {}: {e}", path.display()))?;
    crate::protocol::unhex(text.trim()).ok_or_else(|| {
        format!(
            "token key {} must hold 64 hexadecimal digits",
            path.display()
        )
    })
}

/// Writes `contents` to a new file `path` with `mode`, atomically; false if
/// another process created it first.
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<bool, String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: &dyn std::fmt::Display| format!("cannot create {}: {e}", path.display());
    let dir = parent(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
    tmp.write_all(contents).map_err(|e| fail(&e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(&e))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(true),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(fail(&e.error)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Where the development CA goes by default: beside the token key.
pub fn default_dev_ca(key: &Path) -> PathBuf {
    parent(key).join("kwik-dev-ca.pem")
}

/// The certificate chain and key a server presents: from PEM files if
/// given, else a leaf for `names` issued by the development CA at `dev_ca`.
pub fn server_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    dev_ca: &Path,
    names: Vec<String>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
            Ok((chain, key))
        }
        (None, None) => dev_leaf(dev_ca, names),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

/// Every certificate in the PEM file `path`.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The development CA's parameters; rebuilding them from its key gives the
/// same issuer name and key identifier as its certificate.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kwik development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn dev_leaf(
    dev_ca: &Path,
    names: Vec<String>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let tls = |e: rcgen::Error| format!("development certificate: {e}");
    let private = dev_ca.with_extension("key");
    if !private.exists() {
        let ca_key = KeyPair::generate().map_err(tls)?;
        let ca_cert = ca_params().self_signed(&ca_key).map_err(tls)?;
        let pem = format!("{}{}", ca_cert.pem(), ca_key.serialize_pem());
        if create_new(&private, pem.as_bytes(), 0o600)? {
            eprintln!(
                "kwik: created development CA {} (clients: --ca {})",
                private.display(),
                dev_ca.display()
            );
        }
    }
    let pem = std::fs::read_to_string(&private)
        .map_err(|e| format!("cannot read {}: {e}", private.display()))?;
    let ca_cert = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no CA certificate in {}: {e}", private.display()))?;
    // The public half, for clients (rewritten if missing or stale): the
    // certificate block this file starts with.
    const END: &str = "-----END CERTIFICATE-----";
    let public_pem = match pem.find(END) {
        Some(at) => format!("{}\n", &pem[..at + END.len()]),
        None => return Err(format!("no CA certificate in {}", private.display())),
    };
    let ca_key = KeyPair::from_pem(&pem[public_pem.len() - 1..]).map_err(tls)?;
    if std::fs::read_to_string(dev_ca).ok().as_deref() != Some(public_pem.as_str()) {
        write_replace(dev_ca, public_pem.as_bytes())?;
    }
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params = CertificateParams::new(names).map_err(tls)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kwik development server");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(tls)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((vec![leaf.der().clone(), ca_cert], key))
}

/// Replaces `path` with `contents` atomically (world-readable).
fn write_replace(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(parent(path)).map_err(|e| fail(&e))?;
    tmp.write_all(contents).map_err(|e| fail(&e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail(&e))?;
    tmp.persist(path).map_err(|e| fail(&e.error))?;
    Ok(())
}

/// A rustls client configuration that accepts any server certificate
/// (`--insecure`): the handshake signature is still checked, the identity
/// is not.
pub fn insecure_client() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
