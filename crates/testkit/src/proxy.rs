use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a [`FaultProxy`] treats traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Forward bytes both ways as they come.
    Pass,
    /// Accept connections and read from them, but never forward a byte: the peer
    /// waits forever, like a network partition that drops packets.
    Blackhole,
    /// Forward every chunk after waiting this long.
    Delay(Duration),
    /// Reset new connections as soon as they are accepted, like a server that is down.
    Refuse,
}

struct Shared {
    mode: watch::Sender<FaultMode>,
    cuts: watch::Sender<u64>,
    live: AtomicUsize,
    upstream: String,
}

/// An in-process TCP proxy between a client under test and a real server, which the
/// test can cut, blackhole, delay or restore.
///
/// Point the client at [`FaultProxy::addr`] (or a URL from [`FaultProxy::url_for`])
/// instead of the server. The proxy stops when dropped.
///
/// ```
/// use palisade_testkit::FaultProxy;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// // A one-shot echo server standing in for PostgreSQL or RabbitMQ.
/// let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server_addr = server.local_addr()?;
/// tokio::spawn(async move {
///     let (mut socket, _) = server.accept().await?;
///     let mut buf = [0; 5];
///     socket.read_exact(&mut buf).await?;
///     socket.write_all(&buf).await?;
///     std::io::Result::Ok(())
/// });
///
/// let proxy = FaultProxy::start(&server_addr.to_string()).await?;
/// let mut client = tokio::net::TcpStream::connect(proxy.addr()).await?;
/// client.write_all(b"hello").await?;
/// let mut echo = [0; 5];
/// client.read_exact(&mut echo).await?;
/// assert_eq!(&echo, b"hello");
///
/// proxy.cut(); // the client now sees a reset
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("mode", &*self.shared.mode.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(FaultMode::Pass);
        let (cuts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            mode,
            cuts,
            live: AtomicUsize::new(0),
            upstream: upstream.to_owned(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its `host:port` replaced by the proxy's address, e.g.
    /// `postgres://postgres@127.0.0.1:5432/test` → `postgres://postgres@127.0.0.1:41234/test`.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, url),
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let userinfo = authority.rsplit_once('@').map(|(user, _)| user);
        let mut out = String::new();
        if let Some(scheme) = scheme {
            out.push_str(scheme);
            out.push_str("://");
        }
        if let Some(user) = userinfo {
            out.push_str(user);
            out.push('@');
        }
        out.push_str(&self.addr.to_string());
        out.push_str(tail);
        out
    }

    /// Resets every live connection (the peers see `ECONNRESET`); new connections are
    /// still accepted according to the current mode.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Stops forwarding: live and new connections stay open but nothing passes.
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(FaultMode::Blackhole);
    }

    /// Delays every forwarded chunk by `latency`.
    pub fn delay(&self, latency: Duration) {
        self.shared.mode.send_replace(FaultMode::Delay(latency));
    }

    /// Resets live connections and every new one until [`restore`](Self::restore):
    /// the server looks down.
    pub fn refuse(&self) {
        self.shared.mode.send_replace(FaultMode::Refuse);
        self.cut();
    }

    /// Forwards normally again. Connections blackholed meanwhile stay stuck (their
    /// bytes were dropped); clients recover by reconnecting, as they would in real life.
    pub fn restore(&self) {
        self.shared.mode.send_replace(FaultMode::Pass);
    }

    /// Sets any mode.
    pub fn set_mode(&self, mode: FaultMode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        *self.shared.mode.borrow()
    }

    /// How many client connections are open through the proxy now.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.live.fetch_add(1, Ordering::SeqCst);
            serve(client, &shared).await;
            shared.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Drops a socket so that the peer sees a reset, not an orderly close.
fn reset(stream: TcpStream) {
    // SO_LINGER with a zero timeout makes close() send RST.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve(mut client: TcpStream, shared: &Shared) {
    let mut cuts = shared.cuts.subscribe();
    let mode = shared.mode.subscribe();
    let initial = *mode.borrow();
    let mut upstream = match initial {
        FaultMode::Refuse => return reset(client),
        FaultMode::Blackhole => None,
        FaultMode::Pass | FaultMode::Delay(_) => match TcpStream::connect(&shared.upstream).await {
            Ok(upstream) => Some(upstream),
            Err(_) => return reset(client),
        },
    };
    let _ = client.set_nodelay(true);
    if let Some(upstream) = &upstream {
        let _ = upstream.set_nodelay(true);
    }

    let cut = tokio::select! {
        _ = cuts.changed() => true,
        () = pump(&mut client, upstream.as_mut(), &mode) => false,
    };
    if cut {
        reset(client);
        if let Some(upstream) = upstream {
            reset(upstream);
        }
    }
}

/// Copies both ways until both sides closed, obeying the mode for every chunk.
async fn pump(
    client: &mut TcpStream,
    upstream: Option<&mut TcpStream>,
    mode: &watch::Receiver<FaultMode>,
) {
    let Some(upstream) = upstream else {
        // Blackholed from the start: swallow whatever the client sends.
        let mut buf = vec![0; 16 * 1024];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut up_buf = vec![0; 16 * 1024];
    let mut down_buf = vec![0; 16 * 1024];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        tokio::select! {
            read = client_read.read(&mut up_buf), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = upstream_write.shutdown().await;
                }
                Ok(n) => if !forward(&up_buf[..n], &mut upstream_write, mode).await {
                    return;
                },
            },
            read = upstream_read.read(&mut down_buf), if upstream_open => match read {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    let _ = client_write.shutdown().await;
                }
                Ok(n) => if !forward(&down_buf[..n], &mut client_write, mode).await {
                    return;
                },
            },
        }
    }
}

/// Forwards one chunk according to the mode; false when the writer is gone.
async fn forward<W: AsyncWriteExt + Unpin>(
    chunk: &[u8],
    writer: &mut W,
    mode: &watch::Receiver<FaultMode>,
) -> bool {
    let current = *mode.borrow();
    match current {
        FaultMode::Blackhole | FaultMode::Refuse => true,
        FaultMode::Delay(latency) => {
            tokio::time::sleep(latency).await;
            writer.write_all(chunk).await.is_ok()
        }
        FaultMode::Pass => writer.write_all(chunk).await.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An echo server on a free port; returns its address.
    async fn echo_server() -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut buf = vec![0; message.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn pass_forwards_both_ways() -> io::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?.to_string()).await?;
        let mut client = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut client, b"ping").await?, b"ping");
        assert_eq!(proxy.live_connections(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn cut_mid_stream_makes_the_client_see_a_reset() -> io::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?.to_string()).await?;
        let mut client = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut client, b"before").await?, b"before");

        proxy.cut();
        let mut buf = [0; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .map_err(|_| io::Error::other("no reset within 5 s"))?;
        match read {
            Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("expected a reset, read {n} bytes"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn restore_lets_a_new_connection_through() -> io::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?.to_string()).await?;
        proxy.blackhole();
        let mut stuck = TcpStream::connect(proxy.addr()).await?;
        stuck.write_all(b"lost").await?;
        let mut buf = [0; 4];
        let waited = tokio::time::timeout(Duration::from_millis(300), stuck.read(&mut buf)).await;
        assert!(waited.is_err(), "a blackholed connection must not answer");

        proxy.restore();
        let mut fresh = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut fresh, b"back").await?, b"back");
        Ok(())
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_until_restored() -> io::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?.to_string()).await?;
        proxy.refuse();
        let mut refused = TcpStream::connect(proxy.addr()).await?;
        let outcome = round_trip(&mut refused, b"x").await;
        assert!(outcome.is_err(), "a refused connection must fail");

        proxy.restore();
        let mut fresh = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut fresh, b"up").await?, b"up");
        Ok(())
    }

    #[tokio::test]
    async fn delay_adds_at_least_the_configured_latency() -> io::Result<()> {
        let proxy = FaultProxy::start(&echo_server().await?.to_string()).await?;
        let latency = Duration::from_millis(50);
        proxy.delay(latency);
        let mut client = TcpStream::connect(proxy.addr()).await?;
        let started = Instant::now();
        assert_eq!(round_trip(&mut client, b"slow").await?, b"slow");
        // One delay on the way up and one on the way back.
        assert!(
            started.elapsed() >= 2 * latency,
            "took {:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[tokio::test]
    async fn url_for_points_any_url_at_the_proxy() -> io::Result<()> {
        let proxy = FaultProxy::start("127.0.0.1:9").await?;
        let port = proxy.addr().port();
        assert_eq!(
            proxy.url_for("postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
            format!("postgres://postgres@127.0.0.1:{port}/test?sslmode=disable")
        );
        assert_eq!(
            proxy.url_for("amqp://guest:guest@localhost:5672/%2f"),
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        );
        assert_eq!(
            proxy.url_for("redis://127.0.0.1:6379"),
            format!("redis://127.0.0.1:{port}")
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_upstream_resets_the_client() -> io::Result<()> {
        // Nothing listens on port 1.
        let proxy = FaultProxy::start("127.0.0.1:1").await?;
        let mut client = TcpStream::connect(proxy.addr()).await?;
        assert!(round_trip(&mut client, b"x").await.is_err());
        Ok(())
    }
}
