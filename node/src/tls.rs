//! TLS for the HTTP API: the server's certificate and key, and the certificate authority clients
//! (the `canopy` commands, `canopy-ops`, members forwarding to each other) trust, all PEM files.

use std::path::Path;

/// Makes aws-lc-rs the process's TLS crypto provider. Two providers are compiled in (libp2p's
/// and quinn's dependencies bring both), so rustls cannot pick one by itself; the first call
/// wins and later ones change nothing.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A failure to read a TLS file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("TLS file {path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The server side of the API's TLS, from a certificate chain and its private key.
pub async fn server_config(cert: &Path, key: &Path) -> Result<axum_server::tls_rustls::RustlsConfig, TlsError> {
    install_crypto();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await.map_err(|e| TlsError::File {
        path: cert.to_path_buf(),
        message: format!("{e} (with key {}): give a PEM certificate chain and its PEM private key", key.display()),
    })
}

/// The certificate authority in the PEM file `path`, for a client to trust.
pub fn authority(path: &Path) -> Result<reqwest::Certificate, TlsError> {
    install_crypto();
    let error = |message: String| TlsError::File { path: path.to_path_buf(), message };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| error(format!("not a PEM certificate: {e}")))
}

/// A failure to set up a client of the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API token cannot travel in a header.
    #[error("the API token holds characters a header cannot carry")]
    Token,
    /// The certificate authority file is unusable.
    #[error(transparent)]
    Authority(#[from] TlsError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// A blocking client of a node's API that sends `token` (when given) as `Authorization:
/// Bearer`, marked sensitive so no debug output shows it, and trusts the certificate authority
/// in the PEM file `cacert` (when given) beside none other. Requests never time out.
pub fn blocking_client(token: Option<&str>, cacert: Option<&Path>) -> Result<reqwest::blocking::Client, ClientError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::Token)?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut http = reqwest::blocking::Client::builder().timeout(None).default_headers(headers);
    if let Some(path) = cacert {
        http = http.add_root_certificate(authority(path)?);
    }
    Ok(http.build()?)
}
