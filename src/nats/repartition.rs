//! The payload of a repartition message: the words of one or more input messages for one key
//! partition, in sections tagged with the input message's stream sequence, so the key
//! partition's owner can skip sections it has already applied (after the input partition's
//! owner crashed and replayed) whatever the batching of the replay.
//!
//! Section: 8-byte big-endian input sequence, 4-byte big-endian length, then that many bytes of
//! words, each followed by `\n`.

/// Builds one repartition payload.
#[derive(Debug, Default)]
pub struct SectionWriter {
    buf: Vec<u8>,
    open: Option<(u64, usize)>,
}

impl SectionWriter {
    /// Appends `word` to the section of input sequence `seq`, opening it if needed.
    pub fn push(&mut self, seq: u64, word: &str) {
        if self.open.map(|(s, _)| s) != Some(seq) {
            self.close();
            self.buf.extend_from_slice(&seq.to_be_bytes());
            let at = self.buf.len();
            self.buf.extend_from_slice(&[0; 4]);
            self.open = Some((seq, at));
        }
        self.buf.extend_from_slice(word.as_bytes());
        self.buf.push(b'\n');
    }

    fn close(&mut self) {
        if let Some((_, at)) = self.open.take() {
            let len = (self.buf.len() - at - 4) as u32;
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished payload; the writer is empty again.
    pub fn take(&mut self) -> Vec<u8> {
        self.close();
        std::mem::take(&mut self.buf)
    }
}

/// The sections of a payload: `(input sequence, words)`, or an error naming the offset of the
/// first malformed section.
pub fn sections(payload: &[u8]) -> impl Iterator<Item = Result<(u64, &str), usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= payload.len() {
            return None;
        }
        let at = pos;
        let header = payload.get(pos..pos + 12);
        let Some(header) = header else {
            pos = payload.len();
            return Some(Err(at));
        };
        let seq = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let body = payload.get(pos + 12..pos + 12 + len);
        match body.and_then(|b| std::str::from_utf8(b).ok()) {
            Some(words) => {
                pos += 12 + len;
                Some(Ok((seq, words)))
            }
            None => {
                pos = payload.len();
                Some(Err(at))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sections() {
        let mut w = SectionWriter::default();
        w.push(5, "a");
        w.push(5, "rose");
        w.push(9, "is");
        let payload = w.take();
        assert!(w.is_empty());
        let got: Vec<_> = sections(&payload).collect();
        assert_eq!(got, vec![Ok((5, "a\nrose\n")), Ok((9, "is\n"))]);
    }

    #[test]
    fn reports_a_truncated_section() {
        let mut w = SectionWriter::default();
        w.push(1, "word");
        let payload = w.take();
        let cut = &payload[..payload.len() - 2];
        assert_eq!(sections(cut).collect::<Vec<_>>(), vec![Err(0)]);
        assert_eq!(sections(&payload[..5]).collect::<Vec<_>>(), vec![Err(0)]);
    }
}
