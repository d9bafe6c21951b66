//! A TCP proxy that adds a fixed one-way delay to every byte, in both directions, without
//! serializing a connection's traffic: each chunk read is stamped with its delivery time and a
//! writer thread sends it then, so a pipelined connection keeps many requests in flight (what a
//! network with a longer round trip does). Plain threads and `std::thread::sleep`, which wakes
//! within tens of microseconds, where tokio's timer rounds a sleep up to the next millisecond.
//! The threads' wake-ups and the extra loopback hops add to the delay set: calibrate with
//! [`LatencyProxy::set_one_way`] against a measured round trip.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// A latency proxy to a loopback port, running until the process ends.
#[derive(Debug)]
pub struct LatencyProxy {
    port: u16,
    /// The delay each way, nanoseconds; read for every chunk.
    one_way: Arc<AtomicU64>,
}

impl LatencyProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:upstream_port`, delaying
    /// each direction by `one_way`.
    pub fn start(upstream_port: u16, one_way: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let one_way = Arc::new(AtomicU64::new(nanos(one_way)));
        let delay = Arc::clone(&one_way);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client_reader), Ok(server_reader)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                pipe(client_reader, server, Arc::clone(&delay));
                pipe(server_reader, client, Arc::clone(&delay));
            }
        });
        Ok(Self { port, one_way })
    }

    /// Changes the delay each way, for the chunks read from now on.
    pub fn set_one_way(&self, one_way: Duration) {
        self.one_way.store(nanos(one_way), Ordering::Relaxed);
    }

    /// The delay each way.
    pub fn one_way(&self) -> Duration {
        Duration::from_nanos(self.one_way.load(Ordering::Relaxed))
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{proxy port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Forwards `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Arc<AtomicU64>) {
    let (chunks, delivery) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((
                            Instant::now() + Duration::from_nanos(delay.load(Ordering::Relaxed)),
                            buffer[..n].to_vec(),
                        ))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        while let Ok((at, chunk)) = delivery.recv() {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
