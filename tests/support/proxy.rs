//! A TCP fault proxy for tests: sits between the client and a `redis-server` and misbehaves on
//! demand, like a bad network would, without root or Docker.
//!
//! - [`FaultProxy::set_latency`]: delay every chunk in both directions;
//! - [`FaultProxy::blackhole`] / [`FaultProxy::heal`]: accept connections but forward nothing
//!   (what is held is delivered after `heal`, as TCP would after a route comes back);
//! - [`FaultProxy::strand_connections`]: the open connections go silent for good (a half-open
//!   connection: the peer or a NAT forgot it), new ones work;
//! - [`FaultProxy::reset_all`]: abort every open connection with a RST (linger 0);
//! - [`FaultProxy::refuse`]: close the listening socket (connects are refused) until
//!   `refuse(false)` binds the same port again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy currently does; every connection watches it.
#[derive(Clone, Debug, Default)]
struct Settings {
    latency: Duration,
    blackhole: bool,
    /// Connections with an id below this are stranded (never forward again).
    stranded_below: u64,
    /// Connections with an id below this are reset.
    reset_below: u64,
    refuse: bool,
}

/// A fault-injecting TCP proxy to `upstream`, running on the current tokio runtime until dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: watch::Sender<Settings>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `true` while the listening socket is open.
    listening: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (control, watcher) = watch::channel(Settings::default());
        let next_id = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (listening_tx, listening) = watch::channel(true);
        let task = tokio::spawn(accept_loop(
            listener,
            addr,
            upstream,
            watcher,
            next_id.clone(),
            listening_tx,
        ));
        Self {
            addr,
            control,
            next_id,
            listening,
            task,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:{proxy port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.addr.port())
    }

    /// Delays every forwarded chunk by `latency` (each direction).
    pub fn set_latency(&self, latency: Duration) {
        self.control.send_modify(|s| s.latency = latency);
    }

    /// Stops forwarding: connections are still accepted, bytes are held, nothing is answered.
    pub fn blackhole(&self) {
        self.control.send_modify(|s| s.blackhole = true);
    }

    /// Forwards again (held bytes are delivered), after [`blackhole`](Self::blackhole).
    pub fn heal(&self) {
        self.control.send_modify(|s| s.blackhole = false);
    }

    /// Every connection open now stays silent forever (neither closed nor forwarded); connections
    /// opened later work.
    pub fn strand_connections(&self) {
        let below = self.next_id.load(std::sync::atomic::Ordering::SeqCst);
        self.control.send_modify(|s| s.stranded_below = below);
    }

    /// Aborts every connection open now, on both sides, with a RST.
    pub fn reset_all(&self) {
        let below = self.next_id.load(std::sync::atomic::Ordering::SeqCst);
        self.control.send_modify(|s| s.reset_below = below);
    }

    /// `true`: close the listening socket, so connects are refused; `false`: listen again on the
    /// same port. Returns once done.
    pub async fn refuse(&self, refuse: bool) {
        self.control.send_modify(|s| s.refuse = refuse);
        let mut listening = self.listening.clone();
        listening
            .wait_for(|listening| *listening != refuse)
            .await
            .expect("proxy stopped");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connections end when their watcher sees the sender gone.
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut control: watch::Receiver<Settings>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    listening: watch::Sender<bool>,
) {
    loop {
        if control.borrow_and_update().refuse {
            drop(listener);
            let _ = listening.send(false);
            while control.borrow_and_update().refuse {
                if control.changed().await.is_err() {
                    return;
                }
            }
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(listener) => break listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            let _ = listening.send(true);
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let id = next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(connection(client, upstream, control.clone(), id));
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// What a connection may do now.
enum Gate {
    Open(Duration),
    Closed,
    Reset,
}

fn gate(settings: &Settings, id: u64) -> Gate {
    if id < settings.reset_below {
        Gate::Reset
    } else if settings.blackhole || id < settings.stranded_below {
        Gate::Closed
    } else {
        Gate::Open(settings.latency)
    }
}

/// Waits until the connection may forward; `None` when it must be reset (or the proxy is gone).
async fn wait_open(control: &mut watch::Receiver<Settings>, id: u64) -> Option<Duration> {
    loop {
        match gate(&control.borrow_and_update(), id) {
            Gate::Open(latency) => return Some(latency),
            Gate::Reset => return None,
            Gate::Closed => {}
        }
        control.changed().await.ok()?;
    }
}

fn abort(stream: TcpStream) {
    #[allow(deprecated)] // linger 0 only makes close() send a RST; it never blocks
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Settings>,
    id: u64,
) {
    let _ = client.set_nodelay(true);
    // A black-holed route: the connection is accepted, nothing reaches the server yet.
    if wait_open(&mut control, id).await.is_none() {
        return abort(client);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return abort(client);
    };
    let _ = server.set_nodelay(true);
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    loop {
        if wait_open(&mut control, id).await.is_none() {
            abort(server);
            return abort(client);
        }
        let (chunk, to_server) = tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => (&from_client[..n], true),
            },
            read = server.read(&mut from_server) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => (&from_server[..n], false),
            },
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Latency, and a fault set while the chunk was in flight, apply before delivery.
        let Some(latency) = wait_open(&mut control, id).await else {
            abort(server);
            return abort(client);
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let Some(_) = wait_open(&mut control, id).await else {
            abort(server);
            return abort(client);
        };
        let target = if to_server { &mut server } else { &mut client };
        if target.write_all(chunk).await.is_err() {
            return;
        }
    }
}
