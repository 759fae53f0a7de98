//! A fault-injecting proxy between the agent and moto: AWS unreachable, or throttling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the fault proxy does with the next connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ProxyMode {
    /// Forward to moto.
    Forward = 0,
    /// Accept and close at once: AWS is unreachable.
    Refuse = 1,
    /// Answer every other JSON-protocol request (Secrets Manager) with a ThrottlingException.
    ThrottleEveryOther = 2,
}

/// A loopback TCP proxy in front of moto that this test alone uses, so its faults touch no
/// other test. moto answers with `Connection: close`, so one connection carries one request.
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    /// Connections accepted (= requests attempted).
    pub connections: Arc<AtomicU64>,
    /// Requests answered with a ThrottlingException.
    pub throttled: Arc<AtomicU64>,
    /// Requests forwarded to moto.
    pub forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream` (`http://IP:PORT`).
    pub async fn start(upstream: &str) -> Self {
        let upstream: std::net::SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("moto endpoint is http://IP:PORT");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(ProxyMode::Forward as u8));
        let connections = Arc::new(AtomicU64::new(0));
        let throttled = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let json_requests = Arc::new(AtomicU64::new(0));
        let task = {
            let (mode, connections, throttled, forwarded) = (
                mode.clone(),
                connections.clone(),
                throttled.clone(),
                forwarded.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let mode = mode.load(Ordering::SeqCst);
                    if mode == ProxyMode::Refuse as u8 {
                        drop(client);
                        continue;
                    }
                    let throttle = mode == ProxyMode::ThrottleEveryOther as u8;
                    let (throttled, forwarded, json_requests) =
                        (throttled.clone(), forwarded.clone(), json_requests.clone());
                    tokio::spawn(async move {
                        let _ = serve(
                            client,
                            upstream,
                            throttle,
                            &throttled,
                            &forwarded,
                            &json_requests,
                        )
                        .await;
                    });
                }
            })
        };
        Self {
            addr,
            mode,
            connections,
            throttled,
            forwarded,
            task,
        }
    }

    /// The proxy as an AWS endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What to do with the connections from now on.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: read it whole, then either answer a ThrottlingException or forward it and relay
/// moto's answer until moto closes.
async fn serve(
    mut client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    throttle: bool,
    throttled: &AtomicU64,
    forwarded: &AtomicU64,
    json_requests: &AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let header_end = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < header_end + length {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    // Only JSON-protocol calls (Secrets Manager) are throttled; STS (query protocol) passes.
    if throttle
        && head.contains("x-amz-target:")
        && json_requests
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(2)
    {
        throttled.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n\
             x-amzn-ErrorType: ThrottlingException\r\nx-amzn-RequestId: fault-proxy\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    }
    forwarded.fetch_add(1, Ordering::SeqCst);
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    tokio::io::copy(&mut server, &mut client).await?;
    client.shutdown().await
}
