//! The connection of one call: TCP, then TLS (tokio-rustls, ring provider) trusting only
//! the CA file the client was given.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{ApiClient, ClientError, MAX_CA_BYTES};

impl ApiClient {
    /// TCP (then TLS) to the API, within the connect timeout.
    pub(super) async fn connect(&self, path: &str) -> Result<Stream, ClientError> {
        let url = self.url(path);
        let secs = self.connect_timeout.as_secs();
        match tokio::time::timeout(self.connect_timeout, self.connect_inner(&url)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { url, secs }),
        }
    }

    async fn connect_inner(&self, url: &str) -> Result<Stream, ClientError> {
        let tcp = match TcpStream::connect((self.host.as_str(), self.port)).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                return Err(ClientError::NotRunning {
                    url: self.base_url(),
                })
            }
            Err(e) => {
                return Err(ClientError::Transport {
                    url: url.to_string(),
                    reason: format!("cannot connect to {}: {e}", self.authority()),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(cfg) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        ClientError::Tls {
                            url: url.to_string(),
                            reason: format!("{:?} is not a server name: {e}", self.host),
                        }
                    })?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Tls {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// TLS trusting the certificates of `ca` (PEM), ring provider.
pub(super) fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let len = std::fs::metadata(ca)
        .map_err(|e| format!("--ca {}: cannot read it: {e}", ca.display()))?
        .len();
    if len > MAX_CA_BYTES {
        return Err(format!(
            "--ca {}: {len} bytes is over the {MAX_CA_BYTES}-byte limit",
            ca.display()
        ));
    }
    let pem =
        std::fs::read(ca).map_err(|e| format!("--ca {}: cannot read it: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| format!("--ca {}: not a PEM certificate: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: unusable certificate: {e}", ca.display()))?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "--ca {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A connection to the API: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
