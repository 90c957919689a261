//! Process mode, a core's front worker: the process that runs a source's front half (decoder,
//! stateless steps, `key_by`) for one engine core, in its own interpreter.
//!
//! Forked by `bettong/processes.py` before the engine's threads start, so it holds the user's
//! objects as they were built, with nothing pickled. It answers each batch the core sends over
//! its socket ([`bettong_engine::offload`]) with the keyed records made from it: the whole
//! batch runs under one hold of this process's own GIL, and the batch's decoding and the
//! answer's encoding are done here, in Rust ([`crate::wire`]).

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::python_pipeline::{decode_in, run_steps, PyApp};
use crate::wire::put_keyed;

/// What a worker did, for the parent's report.
#[derive(Default)]
pub struct Tally {
    /// Frames it decoded or rejected: the source's frames, as the run's `frames_in`.
    pub frames_in: u64,
    /// Frames its decoding rejected (invalid UTF-8, or the decoder raised).
    pub frames_rejected: u64,
    /// When a rejection was last logged (at most one a second, as the engine does).
    logged: Option<std::time::Instant>,
}

/// Reads one request (4-byte length, then the batch); `None` at a clean end of stream.
fn read_request(s: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    let mut head = [0u8; 4];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    buf.resize(u32::from_be_bytes(head) as usize, 0);
    s.read_exact(buf)?;
    Ok(Some(()))
}

/// Answers the core's batches on `fd` until the core hangs up. The batch's first 4 bytes name the
/// source whose front half runs. Returns early with the first exception under `on_error="stop"`.
pub fn serve(py: Python<'_>, fd: i32, app: Arc<PyApp>, tally: &mut Tally) -> PyResult<()> {
    // SAFETY: the parent handed this process its own end of a socketpair, open and used by
    // nothing else here; the stream owns it from now on.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    let (mut request, mut answer) = (Vec::new(), Vec::new());
    loop {
        let got = py.detach(|| read_request(&mut sock, &mut request));
        match got {
            Ok(Some(())) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(pyo3::exceptions::PyOSError::new_err(format!(
                    "front worker: reading a batch from the engine failed: {e}"
                )))
            }
        }
        answer.clear();
        answer.extend_from_slice(&[0; 4]);
        let (index, frames) = request.split_at(4.min(request.len()));
        let index = index.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX) as usize;
        let src = app.sources.get(index).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "front worker: the engine sent a batch of source {index}, which the application \
                 does not have"
            ))
        })?;
        for frame in bettong_engine::codec::payloads(frames) {
            tally.frames_in += 1;
            let item = match decode_in(py, &app, src, frame) {
                Ok(item) => item,
                Err(e) => {
                    tally.frames_rejected += 1;
                    if tally.logged.is_none_or(|t| t.elapsed().as_secs() >= 1) {
                        tally.logged = Some(std::time::Instant::now());
                        tracing::warn!(
                            "front worker: rejected a frame that the decoding refused ({e}); \
                             reading goes on ({} rejected so far, logged at most once a second)",
                            tally.frames_rejected
                        );
                    }
                    continue;
                }
            };
            run_steps(py, &app, src, &src.steps, item, &mut |(key, item)| {
                if let Err(e) = put_keyed(py, &key, item.0.bind(py), &mut answer) {
                    app.errors
                        .reject(py, e, "moving a record to its owner core");
                }
            });
        }
        if let Some(e) = app.errors.take_first() {
            return Err(e);
        }
        let len = (answer.len() - 4) as u32;
        answer[..4].copy_from_slice(&len.to_be_bytes());
        let sent = py.detach(|| sock.write_all(&answer));
        if let Err(e) = sent {
            return Err(pyo3::exceptions::PyOSError::new_err(format!(
                "front worker: answering the engine failed: {e}"
            )));
        }
    }
}
