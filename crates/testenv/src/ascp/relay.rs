//! The STS relay ASCP talks to instead of `https://sts.<region>.amazonaws.com`: a TLS listener on
//! a loopback address of its own, with a certificate for that host name from a throwaway CA,
//! that passes the decrypted bytes to a plain-HTTP endpoint (moto's counting proxy), so ASCP's
//! `AssumeRoleWithWebIdentity` calls reach moto and are counted with its other AWS calls.
//!
//! Plain threads and blocking sockets: the relay must not depend on the runtime of whoever
//! started it (a test's runtime ends before the binary does; the bench runs several).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::Error;

/// The HTTPS port ASCP's STS client dials.
const HTTPS_PORT: u16 = 443;

/// A running relay; stops accepting when dropped (open connections end with their peers).
#[derive(Debug)]
pub(crate) struct StsRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl StsRelay {
    /// Listens on `127.x.y.z:443` (a loopback address no other relay of this machine holds, so
    /// tests and benchmarks may run several ASCPs at once) with a certificate for `host`, and
    /// forwards every connection to `upstream`. Writes the CA that signed the certificate to
    /// `ca_file` (PEM), for the client's `SSL_CERT_FILE`.
    pub(crate) fn start(host: &str, upstream: SocketAddr, ca_file: &Path) -> Result<Self, Error> {
        let (config, ca_pem) = server_config(host)?;
        std::fs::write(ca_file, ca_pem).map_err(|e| Error::io(ca_file, e))?;
        let listener = bind_unique_loopback()?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io(Path::new("sts relay"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("testenv-sts-relay".into())
            .spawn(move || accept_loop(&listener, upstream, &Arc::new(config), &stopping))
            .map_err(|e| Error::io(Path::new("sts relay thread"), e))?;
        Ok(Self {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The loopback address the relay listens on (port 443).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StsRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A throwaway CA and a serving certificate for `host` signed by it: (server config, CA PEM).
fn server_config(host: &str) -> Result<(ServerConfig, String), Error> {
    let pki = |what: &str, e: rcgen::Error| Error::Pki(format!("sts relay {what}: {e}"));
    let ca_key = KeyPair::generate().map_err(|e| pki("CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| pki("CA", e))?;
    ca.distinguished_name
        .push(DnType::CommonName, "secrets-store-testenv sts relay CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| pki("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(|e| pki("key", e))?;
    let mut leaf = CertificateParams::new(vec![host.to_string()]).map_err(|e| pki("cert", e))?;
    leaf.distinguished_name.push(DnType::CommonName, host);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).map_err(|e| pki("cert", e))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth().with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
        })
        .map_err(|e| Error::Pki(format!("sts relay TLS config: {e}")))?;
    Ok((config, ca_cert.pem()))
}

/// Binds `127.a.b.c:443` for random `a.b.c`, retrying when another relay holds the address.
fn bind_unique_loopback() -> Result<TcpListener, Error> {
    let mut last = None;
    for _ in 0..32 {
        let mut rng = rand::rng();
        let ip = Ipv4Addr::new(
            127,
            rng.random_range(16..=254),
            rng.random(),
            rng.random_range(1..=254),
        );
        match TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), HTTPS_PORT)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(Error::io(Path::new("127.x.y.z:443 (sts relay)"), e)),
        }
    }
    Err(Error::io(
        Path::new("127.x.y.z:443 (sts relay)"),
        last.unwrap_or_else(|| io::Error::other("no free loopback address")),
    ))
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    config: &Arc<ServerConfig>,
    stop: &AtomicBool,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let config = config.clone();
        let _ = std::thread::Builder::new()
            .name("testenv-sts-relay-conn".into())
            .spawn(move || {
                let _ = relay(client, upstream, config);
            });
    }
}

fn lock(tls: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    tls.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes every TLS record rustls has queued to `client`.
fn flush(tls: &mut ServerConnection, client: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(client)?;
    }
    Ok(())
}

/// One client connection: TLS from `client`, plaintext to and from `upstream`. This thread
/// carries client → upstream; a second one carries upstream → client. Either side closing
/// or failing shuts both sockets, which ends the other thread.
fn relay(client: TcpStream, upstream: SocketAddr, config: Arc<ServerConfig>) -> io::Result<()> {
    let tls = Arc::new(Mutex::new(
        ServerConnection::new(config).map_err(io::Error::other)?,
    ));
    let upstream = TcpStream::connect(upstream).inspect_err(|_| {
        let _ = client.shutdown(Shutdown::Both);
    })?;
    let back = {
        let tls = tls.clone();
        let mut client = client.try_clone()?;
        let mut upstream = upstream.try_clone()?;
        std::thread::Builder::new()
            .name("testenv-sts-relay-back".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match upstream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut tls = lock(&tls);
                    if tls.writer().write_all(&buf[..n]).is_err()
                        || flush(&mut tls, &mut client).is_err()
                    {
                        break;
                    }
                }
                let mut tls = lock(&tls);
                tls.send_close_notify();
                let _ = flush(&mut tls, &mut client);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
            })?
    };
    let result = forward_requests(&tls, client.try_clone()?, upstream.try_clone()?);
    match result {
        // The client is done sending: let the upstream finish its answer, then close.
        Ok(()) => {
            let _ = upstream.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = upstream.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    let _ = back.join();
    result
}

/// Client → upstream: decrypts what the client sends and writes the plaintext upstream, until
/// the client closes.
fn forward_requests(
    tls: &Mutex<ServerConnection>,
    mut client: TcpStream,
    mut upstream: TcpStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut plain = Vec::new();
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let closed = {
            let mut tls = lock(tls);
            let mut records = &buf[..n];
            let mut closed = false;
            while !records.is_empty() {
                tls.read_tls(&mut records)?;
                let state = tls.process_new_packets().map_err(|e| {
                    // Tell the client why (a bad certificate shows in its log), then fail.
                    let _ = flush(&mut tls, &mut client);
                    io::Error::other(e)
                })?;
                let mut chunk = [0u8; 8192];
                loop {
                    match tls.reader().read(&mut chunk) {
                        Ok(0) => break,
                        Ok(k) => plain.extend_from_slice(&chunk[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                closed |= state.peer_has_closed();
            }
            // Handshake answers and session tickets.
            flush(&mut tls, &mut client)?;
            closed
        };
        if !plain.is_empty() {
            upstream.write_all(&plain)?;
            plain.clear();
        }
        if closed {
            return Ok(());
        }
    }
}
