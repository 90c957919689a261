//! Process mode, a core's state worker: the process that owns the states of one engine core's
//! keys and runs the state step and the encoder on them, in its own interpreter.
//!
//! The engine routes every keyed record to its key's owner core, whose sink connection
//! carries it here ([`crate::relay`]): each state worker accepts exactly one connection on the
//! listening socket the parent made, so it owns exactly one core's keys, for the whole run,
//! and sees each key's records in order. It writes the encoded outputs to the application's
//! sink on its own connection (one per core, so a key's outputs leave in order on one
//! connection), or keeps them for a memory sink. Each chunk read from the engine runs under
//! one hold of this process's own GIL.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::python_pipeline::{encode_in, update_in, PyApp};
use crate::wire::{complete_frames, get_value, split_keyed};

/// Where the outputs go.
pub enum Out {
    /// The application's TCP sink (`HOST:PORT`), connected on the first output.
    Tcp(String, Option<TcpStream>),
    /// Kept for the parent (a memory sink).
    Memory(Vec<u8>),
}

impl Out {
    /// Sends (or keeps) `bytes`. A receiver that is not there yet is retried with backoff, up to
    /// a minute, as the engine's own sink does.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Memory(kept) => {
                kept.extend_from_slice(bytes);
                Ok(())
            }
            Out::Tcp(addr, conn) => {
                if conn.is_none() {
                    let mut backoff = Duration::from_millis(20);
                    let mut waited = Duration::ZERO;
                    let stream = loop {
                        match TcpStream::connect(addr.as_str()) {
                            Ok(s) => break s,
                            Err(e) if waited < Duration::from_secs(60) => {
                                if waited.is_zero() {
                                    tracing::warn!(
                                        "state worker: the sink {addr} is not there ({e}); \
                                         retrying with backoff"
                                    );
                                }
                                std::thread::sleep(backoff);
                                waited += backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                            Err(e) => {
                                return Err(std::io::Error::other(format!(
                                    "the sink {addr} stayed unreachable for a minute: {e}"
                                )))
                            }
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    *conn = Some(stream);
                }
                match conn {
                    Some(c) => c.write_all(bytes),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Accepts one core's connection on `listener_fd`, then applies the state step to every record
/// that arrives on it until the engine closes it. Returns early with the first exception under
/// `on_error="stop"`.
pub fn serve(py: Python<'_>, listener_fd: i32, app: Arc<PyApp>, out: &mut Out) -> PyResult<()> {
    let os_err = |what: &str, e: std::io::Error| {
        pyo3::exceptions::PyOSError::new_err(format!("state worker: {what} failed: {e}"))
    };
    // SAFETY: the parent made this listening socket for the state workers and this process
    // uses its copy for this one accept, then closes it.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let (mut conn, _) = py
        .detach(|| listener.accept())
        .map_err(|e| os_err("accepting the engine core's connection", e))?;
    drop(listener);
    let mut states: HashMap<Vec<u8>, Option<Py<PyAny>>> = HashMap::new();
    let (mut buf, mut encoded) = (Vec::with_capacity(1 << 20), Vec::new());
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = py
            .detach(|| conn.read(&mut chunk))
            .map_err(|e| os_err("reading from the engine", e))?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let (frames, used) = complete_frames(&buf);
        encoded.clear();
        for frame in frames {
            let Some((key, value)) = split_keyed(frame) else {
                continue;
            };
            let value = match get_value(py, key, value) {
                Ok(v) => v,
                Err(e) => {
                    app.errors.reject(py, e, "a record from the engine");
                    continue;
                }
            };
            let state = match states.get_mut(key) {
                Some(s) => s,
                None => states.entry(key.to_vec()).or_default(),
            };
            if let Some(output) = update_in(py, &app, state, &value) {
                encode_in(py, &app, &output, &mut encoded);
            }
        }
        buf.drain(..used);
        if let Some(e) = app.errors.take_first() {
            return Err(e);
        }
        if !encoded.is_empty() {
            py.detach(|| out.send(&encoded))
                .map_err(|e| os_err("writing to the sink", e))?;
        }
    }
}
