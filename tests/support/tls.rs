//! Certificates made in the test (rcgen) and a TLS client over real connections (tokio-rustls),
//! for the tests of courier's own listeners over TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA made in the test.
pub type Ca = CertifiedIssuer<'static, KeyPair>;

/// A directory of PEM files for one test, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate and key written to files, with the certificate's DER.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_pem: String,
    pub cert_pem: String,
}

impl Pki {
    pub fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("courier-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new CA; its certificate is written to `<name>.pem`.
    pub fn ca(&self, name: &str) -> (Ca, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("courier test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, ca.pem()).unwrap();
        (ca, path)
    }

    /// A server certificate for 127.0.0.1 and localhost issued by `ca`, as `<name>.crt` and
    /// `<name>.key`, with `cn` as its subject's common name.
    pub fn server(&self, name: &str, ca: &Ca, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.leaf(name, ca, params)
    }

    /// A client certificate issued by `ca` with these SANs and common name, usable for client
    /// authentication.
    pub fn client(&self, name: &str, ca: &Ca, sans: Vec<SanType>, cn: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(name, ca, params)
    }

    /// A certificate for `names` (SANs) issued by `ca`, for server and client use alike.
    pub fn for_names(&self, name: &str, ca: &Ca, names: &[&str]) -> Leaf {
        self.leaf(name, ca, CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap())
    }

    /// Signs `params` with a new key; writes `<name>.crt` and `<name>.key`.
    pub fn leaf(&self, name: &str, ca: &Ca, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let leaf = Leaf {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        };
        std::fs::write(&leaf.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&leaf.key, &leaf.key_pem).unwrap();
        leaf
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces `path` with `text` the way Kubernetes and careful operators do: write aside,
/// rename over.
pub fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The base64 lines of a PEM text (what would show if its content leaked into a log).
pub fn pem_body_lines(pem: &str) -> Vec<&str> {
    pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).collect()
}

/// A client configuration trusting `ca`, with a client certificate when given, speaking
/// `versions` and offering ALPN `alpn`.
pub fn client_config(
    ca: &Path,
    client: Option<&Leaf>,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => {
            let chain = vec![leaf.der.clone()];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Both TLS versions courier offers.
pub const MODERN: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// An HTTP/1.1 connection over TLS, kept alive between requests.
pub struct Conn {
    pub stream: TlsStream<TcpStream>,
}

/// An HTTP answer read off a connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Conn {
    /// Connects to `addr` and runs the handshake (as 127.0.0.1).
    pub async fn open(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        Ok(Conn { stream })
    }

    /// The certificate the server presented.
    pub fn server_certificate(&self) -> CertificateDer<'static> {
        self.stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> rustls::ProtocolVersion {
        self.stream.get_ref().1.protocol_version().unwrap()
    }

    /// POSTs `body` to the process route (with `Authorization: Bearer <key>` when given) and
    /// reads the answer; the connection stays open.
    pub async fn process(&mut self, input: &str, key: Option<&str>) -> io::Result<Reply> {
        let body = format!(r#"{{"data": {{"input": "{input}", "format": "text"}}}}"#);
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let head = format!(
            "POST /api/external/process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body.as_bytes()).await?;
        self.stream.flush().await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or(io::ErrorKind::InvalidData)?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Reply { status, body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned() })
    }
}

/// One request on a new connection: the answer, or why there was none (the handshake or the
/// connection failed). With TLS 1.3 a refused client certificate shows at the first read, after
/// the client's side of the handshake is done.
pub async fn one_request(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    key: Option<&str>,
) -> Result<Reply, String> {
    let mut conn = Conn::open(addr, config).await.map_err(|e| format!("handshake: {e}"))?;
    conn.process("over tls", key).await.map_err(|e| format!("request: {e}"))
}
