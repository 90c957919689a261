//! How records travel between the engine and the worker processes of process mode, as bytes.
//!
//! A value is a tag byte and its payload: `s` a `str` (its UTF-8), `k` a `str` equal to the
//! record's key (no payload: `key_by()` keys a word by itself), `b` a `bytes`, `p` any other
//! object (pickled). Text and bytes, the common case, skip pickle both ways: pickling every word
//! cost more than the word count's own Python work (README, "Python on more than one core").
//! A keyed record is a frame (4-byte big-endian length) holding a 4-byte big-endian key length,
//! the key's bytes, then the value.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

/// Appends one frame (4-byte big-endian length, then `payload`) to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// `BETTONG_PICKLE_ALL=1`: pickle `str` and `bytes` too, to measure what the tags save.
fn pickle_all() -> bool {
    static ALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALL.get_or_init(|| std::env::var("BETTONG_PICKLE_ALL").is_ok_and(|v| v == "1"))
}

fn pickle<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static PICKLE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    PICKLE
        .get_or_try_init(py, || py.import("pickle").map(Bound::unbind))?
        .bind(py)
        .getattr(name)
}

/// Appends `obj` as a tagged value to `out`; `key` is its record's key.
fn put_value(
    py: Python<'_>,
    key: &[u8],
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    if !pickle_all() {
        if let Ok(s) = obj.cast::<PyString>() {
            let text = s.to_str()?.as_bytes();
            if text == key {
                out.push(b'k');
            } else {
                out.push(b's');
                out.extend_from_slice(text);
            }
            return Ok(());
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            out.push(b'b');
            out.extend_from_slice(b.as_bytes());
            return Ok(());
        }
    }
    let dumped = pickle(py, "dumps")?.call1((obj,))?;
    out.push(b'p');
    out.extend_from_slice(dumped.cast::<PyBytes>()?.as_bytes());
    Ok(())
}

/// The object a tagged value holds; `key` is its record's key.
pub fn get_value<'py>(py: Python<'py>, key: &[u8], value: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match value.split_first() {
        Some((b's', text)) => str_of(py, text),
        Some((b'k', [])) => str_of(py, key),
        Some((b'b', bytes)) => Ok(PyBytes::new(py, bytes).into_any()),
        Some((b'p', pickled)) => pickle(py, "loads")?.call1((PyBytes::new(py, pickled),)),
        _ => Err(pyo3::exceptions::PyValueError::new_err(
            "a value from the engine has no known tag (s, k, b or p): the worker and the engine \
             are out of step",
        )),
    }
}

fn str_of<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let text = std::str::from_utf8(text).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("a str value is not UTF-8: {e}"))
    })?;
    Ok(PyString::new(py, text).into_any())
}

/// Appends a keyed record (key, then `obj` tagged) as one frame.
pub fn put_keyed(
    py: Python<'_>,
    key: &[u8],
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<u8>,
) -> PyResult<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Err(e) = put_value(py, key, obj, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A keyed record's payload split into key and tagged value, or `None` if it is malformed.
pub fn split_keyed(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let key = payload.get(4..4 + n)?;
    Some((key, &payload[4 + n..]))
}

/// Every complete frame at the start of `buf`, and how many bytes they take.
pub fn complete_frames(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut used = 0;
    let frames = bettong_engine::codec::frames(buf)
        .map_while(Result::ok)
        .map(|f| {
            used = f.end();
            f.payload
        })
        .collect();
    (frames, used)
}
