//! Busy clients: well-behaved connections sending random messages beside whatever a test does
//! to the server, whose output must stay exact. Works with either way of starting a server.

use std::net::TcpStream;
use std::thread;

use super::{frame_all, random_message, send_in_chunks, Rng, Server, ShServer};

/// What busy clients need of a running server.
pub trait Serving {
    /// A new connection to the server's source.
    fn connect(&self) -> TcpStream;
    /// What the server wrote on stderr so far, for failure messages.
    fn stderr(&self) -> String;
}

impl Serving for Server {
    fn connect(&self) -> TcpStream {
        Server::connect(self)
    }
    fn stderr(&self) -> String {
        Server::stderr(self)
    }
}

impl Serving for ShServer {
    fn connect(&self) -> TcpStream {
        ShServer::connect(self)
    }
    fn stderr(&self) -> String {
        ShServer::stderr(self)
    }
}

/// Busy clients' input: `frames` random messages each, framed.
pub fn busy_inputs(clients: usize, frames: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..clients)
        .map(|c| {
            let mut rng = Rng::new(seed + c as u64);
            let payloads: Vec<String> = (0..frames)
                .map(|_| random_message(&mut rng, 1, 12))
                .collect();
            frame_all(&payloads)
        })
        .collect()
}

/// Sends every busy input on its own connection, in random pieces, each from its own thread.
pub fn send_busy(server: &impl Serving, inputs: &[Vec<u8>], seed: u64) {
    thread::scope(|s| {
        let senders: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(c, framed)| {
                let mut stream = server.connect();
                s.spawn(move || {
                    send_in_chunks(&mut stream, framed, &mut Rng::new(seed ^ c as u64))
                        .map_err(|e| format!("busy client {c}: {e}"))
                })
            })
            .collect();
        for h in senders {
            if let Err(e) = h.join().expect("a busy client panicked") {
                panic!("{e}; the server's stderr:\n{}", server.stderr());
            }
        }
    });
}
