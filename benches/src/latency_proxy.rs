//! A TCP proxy that adds a fixed one-way delay to every byte, in both directions, without
//! serializing a connection's traffic: each chunk read is stamped with its delivery time and a
//! writer thread sends it then, so a pipelined connection keeps many requests in flight (what a
//! network with a longer round trip does). Plain threads and `std::thread::sleep`, which wakes
//! within tens of microseconds, where tokio's timer rounds a sleep up to the next millisecond.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A latency proxy to a loopback port, running until the process ends.
#[derive(Debug)]
pub struct LatencyProxy {
    port: u16,
}

impl LatencyProxy {
    /// Starts a proxy on a free loopback port forwarding to `127.0.0.1:upstream_port`, delaying
    /// each direction by `one_way`.
    pub fn start(upstream_port: u16, one_way: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
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
                pipe(client_reader, server, one_way);
                pipe(server_reader, client, one_way);
            }
        });
        Ok(Self { port })
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

/// Forwards `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, delivery) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
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
