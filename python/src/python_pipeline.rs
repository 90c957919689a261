//! The user's Python application as an engine pipeline.
//!
//! Each source: the engine frames it (4-byte big-endian lengths); the frame becomes a `str`
//! (invalid UTF-8 rejects the frame, as in Rust), or whatever the user's decoder returns
//! (an exception in the decoder rejects the frame); then the source's stateless steps and its
//! `key_by` run in Python on the core that read the frame. The key (a `str` or `bytes`) is
//! hashed in Rust and the record crosses to its owner core, where the state step (the user's
//! state class and computation) and the encoder run in Python. Every call to Python goes
//! through [`with_python`], so a core takes the GIL once per batch.

use std::sync::Arc;

use bettong_engine::{DecodeError, PersistApp, Pipeline};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::gil_batch::with_python;
use crate::item::{Item, State};
use crate::user_errors::UserErrors;

/// One stateless step.
pub enum Step {
    /// `to`: one output per record (`None` drops the record).
    To(Py<PyAny>, String),
    /// `to_multi`: any iterable of outputs.
    ToMulti(Py<PyAny>, String),
    /// The built-in word splitter (the spec's rules, in Rust): `str` in, its words out.
    NativeSplit,
}

/// How a record's key is made.
pub enum KeyFn {
    /// The user's function.
    Py(Py<PyAny>, String),
    /// The record is its own key.
    Identity,
}

/// One source's Python side.
pub struct SourceSteps {
    /// The decoder, or `None` for UTF-8 text.
    pub decoder: Option<(Py<PyAny>, String)>,
    /// The stateless steps, in order.
    pub steps: Vec<Step>,
    /// The key function.
    pub key: KeyFn,
}

/// The state step and the encoder.
pub struct Tail {
    /// Makes a key's state (the user's state class).
    pub state_class: (Py<PyAny>, String),
    /// `compute(item, state)`: an output or `None`.
    pub compute: (Py<PyAny>, String),
    /// `encode(output)`: `bytes` or `str` for the sink.
    pub encoder: (Py<PyAny>, String),
}

/// The whole application, shared by every core's copy of the pipeline.
pub struct PyApp {
    /// One entry per source, in order.
    pub sources: Vec<SourceSteps>,
    /// The state step and encoder.
    pub tail: Tail,
    /// Where exceptions go.
    pub errors: Arc<UserErrors>,
}

/// The key of a record: the bytes of the `str` (UTF-8) or `bytes` the key function returned.
fn key_bytes(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "a key must be str or bytes, got {} ({}): make key_by's function return one",
        key.get_type().name()?,
        key.repr()?
    )))
}

/// Runs `steps` on `item`, then keys every result and passes it to `emit`. An exception
/// rejects the record (or the part of it that raised).
pub fn run_steps<'py>(
    py: Python<'py>,
    app: &PyApp,
    src: &SourceSteps,
    steps: &[Step],
    item: Bound<'py, PyAny>,
    emit: &mut dyn FnMut((Vec<u8>, Item)),
) {
    let errors = &app.errors;
    match steps.split_first() {
        None => {
            let key = match &src.key {
                KeyFn::Identity => key_bytes(&item),
                KeyFn::Py(f, name) => match f.bind(py).call1((&item,)) {
                    Ok(k) => key_bytes(&k),
                    Err(e) => return errors.reject(py, e, name),
                },
            };
            match key {
                Ok(k) => emit((k, Item(item.unbind()))),
                Err(e) => errors.reject(py, e, "key_by"),
            }
        }
        Some((Step::To(f, name), rest)) => match f.bind(py).call1((item,)) {
            Ok(out) if out.is_none() => {}
            Ok(out) => run_steps(py, app, src, rest, out, emit),
            Err(e) => errors.reject(py, e, name),
        },
        Some((Step::ToMulti(f, name), rest)) => {
            let outs = match f.bind(py).call1((item,)).and_then(|o| o.try_iter()) {
                Ok(outs) => outs,
                Err(e) => return errors.reject(py, e, name),
            };
            for out in outs {
                match out {
                    Ok(out) => run_steps(py, app, src, rest, out, emit),
                    Err(e) => return errors.reject(py, e, name),
                }
            }
        }
        Some((Step::NativeSplit, rest)) => {
            let text = match item.cast::<PyString>() {
                Ok(s) => s.to_cow(),
                Err(e) => return errors.reject(py, e.into(), "bettong.native.SplitWords"),
            };
            match text {
                Ok(text) => bettong::split::for_each_word(&text, |w| {
                    run_steps(py, app, src, rest, PyString::new(py, &w).into_any(), emit)
                }),
                Err(e) => errors.reject(py, e, "bettong.native.SplitWords"),
            }
        }
    }
}

/// Decodes one frame of source `src`: UTF-8 text as `str`, or the user's decoder's value.
fn decode(app: &PyApp, src: &SourceSteps, frame: &[u8]) -> Result<Item, DecodeError> {
    with_python(|py| decode_in(py, app, src, frame).map(|v| Item(v.unbind())))
}

/// [`decode`] with the GIL held.
pub fn decode_in<'py>(
    py: Python<'py>,
    app: &PyApp,
    src: &SourceSteps,
    frame: &[u8],
) -> Result<Bound<'py, PyAny>, DecodeError> {
    match &src.decoder {
        None => Ok(PyString::new(py, std::str::from_utf8(frame)?).into_any()),
        Some((f, name)) => match f.bind(py).call1((PyBytes::new(py, frame),)) {
            Ok(v) => Ok(v),
            Err(e) => {
                app.errors.reject(py, e, name);
                Err(DecodeError::new(
                    "the Python decoder raised an exception (its traceback is logged)",
                ))
            }
        },
    }
}

/// Applies the state step to one record on its key's owner core.
fn update(app: &PyApp, state: &mut State, value: Item) -> Option<Item> {
    with_python(|py| update_in(py, app, &mut state.0, value.0.bind(py)).map(|o| Item(o.unbind())))
}

/// The state step on one record, with the GIL held: makes the key's state on its first record,
/// then `compute(value, state)`; the output, or `None` (none, or the record was rejected).
pub fn update_in<'py>(
    py: Python<'py>,
    app: &PyApp,
    state: &mut Option<Py<PyAny>>,
    value: &Bound<'py, PyAny>,
) -> Option<Bound<'py, PyAny>> {
    let tail = &app.tail;
    if state.is_none() {
        match tail.state_class.0.bind(py).call0() {
            Ok(s) => *state = Some(s.unbind()),
            Err(e) => {
                app.errors.reject(py, e, &tail.state_class.1);
                return None;
            }
        }
    }
    let s = state.as_ref()?.bind(py);
    match tail.compute.0.bind(py).call1((value, s)) {
        Ok(out) if out.is_none() => None,
        Ok(out) => Some(out),
        Err(e) => {
            app.errors.reject(py, e, &tail.compute.1);
            None
        }
    }
}

/// Appends the encoding of one output to the sink's buffer.
fn encode(app: &PyApp, output: &Item, out: &mut Vec<u8>) {
    with_python(|py| encode_in(py, app, output.0.bind(py), out))
}

/// The encoder on one output, with the GIL held: its bytes (or a `str`'s UTF-8) appended to
/// `out`; an exception or another type rejects the output.
pub fn encode_in(py: Python<'_>, app: &PyApp, output: &Bound<'_, PyAny>, out: &mut Vec<u8>) {
    let (f, name) = &app.tail.encoder;
    let encoded = f.bind(py).call1((output,));
    let appended = encoded.and_then(|e| {
        if let Ok(b) = e.cast::<PyBytes>() {
            out.extend_from_slice(b.as_bytes());
            Ok(())
        } else if let Ok(s) = e.cast::<PyString>() {
            out.extend_from_slice(s.to_str()?.as_bytes());
            Ok(())
        } else {
            Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "an encoder must return bytes or str, got {}",
                e.get_type().name()?
            )))
        }
    });
    if let Err(e) = appended {
        app.errors.reject(py, e, name);
    }
}

/// The engine pipeline of `app`: every source merged into the state step, then the encoder.
pub fn build(app: Arc<PyApp>) -> impl PersistApp {
    // One source's front half (a closure, so every source's has the same type to merge).
    let front = |index: usize| {
        let (a, b) = (app.clone(), app.clone());
        Pipeline::decode(move |frame: &[u8]| decode(&a, &a.sources[index], frame))
            .flat_map(move |item: Item, emit: &mut dyn FnMut((Vec<u8>, Item))| {
                let src = &b.sources[index];
                with_python(|py| run_steps(py, &b, src, &src.steps, item.0.into_bound(py), emit))
            })
            .key_by(|kv: (Vec<u8>, Item)| kv)
    };
    let rest = (1..app.sources.len()).map(front).collect();
    let (c, e) = (app.clone(), app.clone());
    front(0)
        .merge_all(rest)
        .state_with(
            |_: &Vec<u8>| State(None),
            move |_: &Vec<u8>, state: &mut State, value: Item| update(&c, state, value),
        )
        .encode(move |_, output: &Item, out: &mut Vec<u8>| encode(&e, output, out))
}
