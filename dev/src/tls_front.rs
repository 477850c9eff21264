//! HTTPS in front of a local server, as S3 and Terra's payload hosts speak
//! it: the handler's TLS handshakes, record encryption and kept-alive
//! connections then cost what they cost in the field. One test certificate
//! authority signs a certificate for 127.0.0.1; a handler trusts it through
//! `SSL_CERT_FILE`, which both its HTTP clients read in place of the
//! system's roots.
//!
//! The front speaks HTTP/1.1 to the handler and relays each request to the
//! server behind it on a connection of its own, so the handler's
//! connections stay open as S3 keeps them even where the server closes
//! every one (moto's answers all say `Connection: close`): a handshake per
//! request would be the harness's cost, not the field's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::header::CONNECTION;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one run, and a server certificate it
/// signed for 127.0.0.1.
pub struct TestAuthority {
    /// The authority's certificate in PEM, for `SSL_CERT_FILE`.
    pub ca_file: PathBuf,
    server: Arc<ServerConfig>,
}

impl TestAuthority {
    pub fn new() -> TestAuthority {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let ca_file = std::env::temp_dir().join(format!(
            "terra-sink-test-ca-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&ca_file, ca_cert.pem()).expect("write the CA certificate");

        let server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server TLS configuration");
        TestAuthority {
            ca_file,
            server: Arc::new(server),
        }
    }

    /// Serves HTTPS on a port of its own, relaying each request to
    /// `backend` over plain HTTP.
    pub async fn front(&self, backend: SocketAddr) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let acceptor = TlsAcceptor::from(Arc::clone(&self.server));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Ok(client) = acceptor.accept(client).await else {
                        return;
                    };
                    let relay = service_fn(move |request| relay(request, backend));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(client), relay)
                        .await;
                });
            }
        });
        TlsFront {
            addr,
            backend,
            connections,
            task,
        }
    }
}

/// Sends `request` to `backend` on a new connection and hands back its
/// answer, less any `Connection: close` (the handler's connection is the
/// front's to keep). A failure closes the handler's connection, as a lost
/// connection to S3 would.
async fn relay(
    request: Request<Incoming>,
    backend: SocketAddr,
) -> Result<Response<Incoming>, RelayError> {
    let server = TcpStream::connect(backend).await?;
    let _ = server.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(server)).await?;
    tokio::spawn(connection);
    let mut response = sender.send_request(request).await?;
    response.headers_mut().remove(CONNECTION);
    Ok(response)
}

type RelayError = Box<dyn std::error::Error + Send + Sync>;

impl Default for TestAuthority {
    fn default() -> Self {
        TestAuthority::new()
    }
}

impl Drop for TestAuthority {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An HTTPS listener in front of a plain HTTP server.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// The plain server behind.
    backend: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// `http://<backend>/…` as the same URL through this front.
    pub fn https(&self, plain_url: &str) -> String {
        plain_url.replacen(
            &format!("http://{}", self.backend),
            &format!("https://{}", self.addr),
            1,
        )
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far: each one a TLS handshake.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::response::IntoResponse;
    use axum::routing::put;

    /// Answers as moto does: every response closes its connection.
    async fn closing_server() -> SocketAddr {
        let answer = || async { ([(CONNECTION, "close")], "stored").into_response() };
        let router = Router::new().route("/bucket/{key}", put(answer));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// A server that closes every connection still costs the client one
    /// handshake, as S3 would: the front keeps the client's connection.
    #[tokio::test]
    async fn the_client_keeps_one_connection_whatever_the_server_closes() {
        let authority = TestAuthority::new();
        let backend = closing_server().await;
        let front = authority.front(backend).await;
        let ca = std::fs::read(&authority.ca_file).expect("CA file");
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("PEM")])
            .build()
            .expect("client");
        for n in 0..5 {
            let url = front.https(&format!("http://{backend}/bucket/{n}"));
            let response = client.put(url).body("{}").send().await.expect("relayed");
            assert!(response.status().is_success());
            assert!(response.headers().get(CONNECTION).is_none());
            assert_eq!(response.text().await.expect("body"), "stored");
        }
        assert_eq!(front.connections(), 1);
    }
}
