//! A fault-injecting TCP proxy between the scaler and a real backend (Redis, Kafka, SQS): the
//! network failures a cluster sees, switched at run time and applied to connections already
//! open, so a test sees what the scaler's pooled clients do with them.
//!
//! The faults are TCP-level, so the backend's own protocol is untouched: a Kafka broker behind
//! the proxy must advertise the proxy's address (the harness's `KafkaBroker` does, when told
//! to), and Redis and HTTP need nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the network between the scaler and the backend does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything.
    None,
    /// Holds every chunk this long before forwarding it, in each direction (a round trip gains
    /// twice this).
    Latency(Duration),
    /// Forwards at most this many bytes per second in each direction.
    Bandwidth(u64),
    /// Forwards nothing: bytes wait in the sockets and flow again when the fault clears (a
    /// partition that heals; TCP loses nothing in it).
    Stall,
    /// The backend is gone without a word: every connection open now never carries another
    /// byte, even after the fault clears (no FIN, no RST: a half-open connection), and new
    /// ones are accepted and never answered while it lasts.
    Blackhole,
    /// Every open connection is reset (RST), and new ones are reset on accept.
    Reset,
}

/// The proxy: listens on a loopback port and forwards to `target` under the current [`Fault`].
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    state: Arc<watch::Sender<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    fault: Fault,
    /// Bumped by each [`Fault::Blackhole`]: connections born before it are dead for good.
    epoch: u64,
}

impl FaultProxy {
    /// Starts forwarding to `target` with no fault.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (tx, _) = watch::channel(State {
            fault: Fault::None,
            epoch: 0,
        });
        let state = Arc::new(tx);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = shared.subscribe();
                tokio::spawn(connection(client, target, rx));
            }
        });
        Ok(Self { port, state, task })
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches the fault, for open connections and new ones alike.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|s| {
            s.fault = fault;
            if fault == Fault::Blackhole {
                s.epoch += 1;
            }
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes a socket with RST rather than FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and drops whatever the peer sends until it closes: a connection to nowhere.
async fn swallow(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut rx: watch::Receiver<State>) {
    let born = *rx.borrow_and_update();
    match born.fault {
        Fault::Reset => return reset(client),
        Fault::Blackhole => return swallow(client).await,
        _ => {}
    }
    let Ok(Ok(mut server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await
    else {
        return reset(client);
    };
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let now = *rx.borrow_and_update();
        if now.epoch != born.epoch || now.fault == Fault::Blackhole {
            // Blackholed since it opened: dead for good, whatever comes next.
            drop(server);
            return swallow(client).await;
        }
        match now.fault {
            Fault::Reset => {
                reset(server);
                return reset(client);
            }
            Fault::Stall => {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Blackhole | Fault::None | Fault::Latency(_) | Fault::Bandwidth(_) => {}
        }
        tokio::select! {
            r = client.read(&mut up) => match r {
                Ok(n) if n > 0 => {
                    if forward(&mut server, &up[..n], now.fault).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            r = server.read(&mut down) => match r {
                Ok(n) if n > 0 => {
                    if forward(&mut client, &down[..n], now.fault).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn forward(to: &mut TcpStream, data: &[u8], fault: Fault) -> std::io::Result<()> {
    match fault {
        Fault::Latency(d) => {
            tokio::time::sleep(d).await;
            to.write_all(data).await
        }
        Fault::Bandwidth(bytes_per_second) => {
            let rate = bytes_per_second.max(1);
            // Slices of a twentieth of a second's worth, so the pace is even.
            let slice = usize::try_from((rate / 20).max(1)).unwrap_or(usize::MAX);
            for part in data.chunks(slice) {
                to.write_all(part).await?;
                tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / rate as f64)).await;
            }
            Ok(())
        }
        _ => to.write_all(data).await,
    }
}
