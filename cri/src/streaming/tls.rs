//! TLS for the streaming server (`[streaming] enable_tls`), for when kubelet reaches it
//! through a proxy or over the network: the operator's certificate and key (PEM files), or
//! without them a self-signed certificate made at start for the listen address, as
//! containerd does (kubelet does not verify the runtime's streaming certificate; a client
//! that wants to can pin the fingerprint logged at start).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use tokio_rustls::TlsAcceptor;

use super::StreamingConfig;

/// Why TLS cannot be set up; each names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "key `streaming.{set}` is set but `streaming.{missing}` is not: give both the \
         certificate and its key, or neither (a self-signed certificate is made at start)"
    )]
    HalfPair {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "key `streaming.{key}` is set but `streaming.enable_tls` is false: set \
         enable_tls = true to serve TLS, or remove the key"
    )]
    NotEnabled { key: &'static str },
    #[error("key `streaming.{key}`: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key `streaming.{key}`: {}: {message}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "keys `streaming.tls_cert_file` and `streaming.tls_key_file`: the key does not \
         fit the certificate or is not usable: {0}"
    )]
    Mismatch(rustls::Error),
    #[error("key `streaming.enable_tls`: making a self-signed certificate: {0}")]
    SelfSigned(String),
}

/// How the server speaks TLS, once set up.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the served certificate (DER), lowercase hex: what a client can pin.
    pub fingerprint: String,
    /// Made at start (no files configured).
    pub self_signed: bool,
}

/// Checks the TLS keys (pairing, files readable, PEM valid, key fits the certificate)
/// without making anything: a configuration error stops start-up naming the key.
pub fn check(config: &StreamingConfig) -> Result<(), TlsError> {
    if let Some((cert, key)) = files(config)? {
        server_config(load_certs(&cert)?, load_key(&key)?)?;
    }
    Ok(())
}

/// The acceptor `config` asks for: `None` without `enable_tls`.
pub fn setup(config: &StreamingConfig) -> Result<Option<Tls>, TlsError> {
    if !config.enable_tls {
        files(config)?;
        return Ok(None);
    }
    let (certs, key, self_signed) = match files(config)? {
        Some((cert, key)) => (load_certs(&cert)?, load_key(&key)?, false),
        None => {
            let (cert, key) = self_signed_for(config.address)?;
            (vec![cert], key, true)
        }
    };
    let fingerprint = certs
        .first()
        .map(|c| hex::encode(sha2::Sha256::digest(c.as_ref())))
        .unwrap_or_default();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(certs, key)?));
    Ok(Some(Tls {
        acceptor,
        fingerprint,
        self_signed,
    }))
}

/// The configured (certificate, key) files: both, or neither.
fn files(config: &StreamingConfig) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
    const CERT: &str = "tls_cert_file";
    const KEY: &str = "tls_key_file";
    let pair = match (&config.tls_cert_file, &config.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => Err(TlsError::HalfPair {
            set: CERT,
            missing: KEY,
        }),
        (None, Some(_)) => Err(TlsError::HalfPair {
            set: KEY,
            missing: CERT,
        }),
        (Some(c), Some(k)) => Ok((c.clone(), k.clone())),
    }?;
    if !config.enable_tls {
        return Err(TlsError::NotEnabled { key: CERT });
    }
    Ok(Some(pair))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in the file, leaf first (a chain may follow).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let key = "tls_cert_file";
    let pem = read(key, path)?;
    let bad = |message: String| TlsError::Pem {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section in the file".to_owned()));
    }
    Ok(certs)
}

/// The private key (PKCS#8, PKCS#1 or SEC1 PEM).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "tls_key_file";
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key,
        path: path.to_owned(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section in the file",
            _ => "invalid PEM private key",
        }
        .to_owned()
            + &format!(" ({e})"),
    })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    // The upgrade is HTTP/1.1 (SPDY and WebSocket both start from it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A self-signed certificate (ECDSA P-256) naming `addr`; an unspecified address (any
/// interface) gets loopback, `localhost` and the host name, as a client may use any.
fn self_signed_for(
    addr: IpAddr,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let names = if addr.is_unspecified() {
        let mut names = vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "localhost".to_owned(),
        ];
        if let Ok(host) = nix::unistd::gethostname()
            && let Some(host) = host.to_str()
            && !host.is_empty()
        {
            names.push(host.to_owned());
        }
        names
    } else {
        vec![addr.to_string()]
    };
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_owned()))?;
    Ok((certified.cert.der().clone(), key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(cert: Option<&Path>, key: Option<&Path>, enable: bool) -> StreamingConfig {
        StreamingConfig {
            enable_tls: enable,
            tls_cert_file: cert.map(Path::to_owned),
            tls_key_file: key.map(Path::to_owned),
            ..StreamingConfig::default()
        }
    }

    #[test]
    fn self_signed_when_enabled_without_files() {
        let tls = setup(&config(None, None, true)).unwrap().unwrap();
        assert!(tls.self_signed);
        assert_eq!(tls.fingerprint.len(), 64);
        assert!(setup(&config(None, None, false)).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let err = |c: &StreamingConfig| check(c).unwrap_err().to_string();
        let e = err(&config(Some(&cert), None, true));
        assert!(
            e.contains("tls_key_file") && e.contains("tls_cert_file"),
            "{e}"
        );
        let e = err(&config(Some(&cert), Some(&key), true));
        assert!(
            e.contains("streaming.tls_cert_file") && e.contains("cert.pem"),
            "{e}"
        );
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let e = err(&config(Some(&cert), Some(&key), true));
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = err(&config(Some(&cert), Some(&key), true));
        assert!(e.contains("streaming.tls_key_file"), "{e}");
        // A key of another certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let e = err(&config(Some(&cert), Some(&key), true));
        assert!(e.contains("does not fit"), "{e}");
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        check(&config(Some(&cert), Some(&key), true)).unwrap();
        let e = err(&config(Some(&cert), Some(&key), false));
        assert!(e.contains("enable_tls"), "{e}");
    }
}
