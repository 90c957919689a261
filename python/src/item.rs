//! A Python object as the engine carries it: records, routed values and per-key states, and
//! how they are written into checkpoints (pickled by default, or by the user's codec).
//!
//! Records cross cores as Python objects, moved (the engine moves the pointer through its
//! rings; no serialisation, no copy), which needs no GIL in flight: a `Py<PyAny>` is `Send`.

use std::sync::{Arc, Mutex};

use bettong_engine::Persist;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::gil_batch::with_python;

/// One Python object owned by the engine.
pub struct Item(pub Py<PyAny>);

/// A key's state: made by the user's state class on the key's first record.
#[derive(Default)]
pub struct State(pub Option<Py<PyAny>>);

/// The codec that writes states into checkpoints: `(encode, decode)`, or pickle when unset.
/// Process-wide, since the engine restores states without context; set by the runner.
static STATE_CODEC: Mutex<Option<Arc<Codec>>> = Mutex::new(None);

/// A user's state codec: `(encode, decode)`.
type Codec = (Py<PyAny>, Py<PyAny>);

/// Sets the state codec for the checkpoints of the next run (`None`: pickle).
pub fn set_state_codec(codec: Option<Codec>) {
    *STATE_CODEC.lock().unwrap_or_else(|e| e.into_inner()) = codec.map(Arc::new);
}

fn state_codec() -> Option<Arc<Codec>> {
    STATE_CODEC
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// `pickle.dumps(obj)` or `encode(obj)`: bytes, or the error that says why not.
fn dump(py: Python<'_>, obj: &Py<PyAny>, encode: Option<&Py<PyAny>>) -> PyResult<Vec<u8>> {
    let bytes = match encode {
        Some(encode) => encode.bind(py).call1((obj.bind(py),))?,
        None => py
            .import("pickle")?
            .call_method1("dumps", (obj.bind(py),))?,
    };
    Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
}

/// `pickle.loads(bytes)` or `decode(bytes)`.
fn load(py: Python<'_>, bytes: &[u8], decode: Option<&Py<PyAny>>) -> PyResult<Py<PyAny>> {
    let b = PyBytes::new(py, bytes);
    let obj = match decode {
        Some(decode) => decode.bind(py).call1((b,))?,
        None => py.import("pickle")?.call_method1("loads", (b,))?,
    };
    Ok(obj.unbind())
}

/// Writes `obj` (or nothing for `None`) as a length-prefixed blob. An object that cannot be
/// encoded is a bug in the user's state or codec that would lose state silently: it is logged
/// with its traceback and written as an empty blob, which restores as "no state yet".
fn persist_obj(obj: Option<&Py<PyAny>>, encode: Option<&Py<PyAny>>, out: &mut Vec<u8>) {
    let bytes = match obj {
        None => Vec::new(),
        Some(obj) => with_python(|py| match dump(py, obj, encode) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    "checkpoint: a Python state could not be encoded (its key restarts empty \
                     after a restore); fix the state class or give to_state a codec: {e}"
                );
                e.print(py);
                Vec::new()
            }
        }),
    };
    bytes.persist(out);
}

fn restore_obj(input: &mut &[u8], decode: Option<&Py<PyAny>>) -> Option<Option<Py<PyAny>>> {
    let bytes = Vec::<u8>::restore(input)?;
    if bytes.is_empty() {
        return Some(None);
    }
    with_python(|py| match load(py, &bytes, decode) {
        Ok(obj) => Some(Some(obj)),
        Err(e) => {
            tracing::error!(
                "restore: a checkpointed Python state could not be decoded (is the state class \
                 importable under the same name, and the codec the one that wrote it?): {e}"
            );
            None
        }
    })
}

impl Persist for State {
    fn persist(&self, out: &mut Vec<u8>) {
        let codec = state_codec();
        persist_obj(self.0.as_ref(), codec.as_ref().map(|c| &c.0), out);
    }

    fn restore(input: &mut &[u8]) -> Option<Self> {
        let codec = state_codec();
        restore_obj(input, codec.as_ref().map(|c| &c.1)).map(State)
    }
}

impl Persist for Item {
    fn persist(&self, out: &mut Vec<u8>) {
        persist_obj(Some(&self.0), None, out);
    }

    fn restore(input: &mut &[u8]) -> Option<Self> {
        restore_obj(input, None)?.map(Item)
    }
}
