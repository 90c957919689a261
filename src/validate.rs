//! Incremental checker for the word-count output contract.
//!
//! The server's output is only correct if every word's lines come as `word => 1`, `word => 2`, …
//! with no gap and no repeat, all on one sink connection (see `word-count.md`). Output arrives as
//! arbitrary TCP chunks on many connections at once, at millions of lines per second, so this
//! checker is fed raw chunks per connection, keeps a partial-line buffer for each, and checks every
//! complete line as it goes instead of storing the stream.

use std::collections::HashMap;
use std::fmt;

/// Longest excerpt of a bad line quoted in a [`Violation`].
const MAX_QUOTE: usize = 200;

/// A breach of the output contract, found by [`OrderValidator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A count skipped ahead: `got` arrived where `expected` was due (this includes a first line
    /// for a word whose count is not 1).
    Gap {
        /// The word whose count jumped.
        word: String,
        /// The connection the line arrived on.
        conn: usize,
        /// The count that was due.
        expected: u64,
        /// The count that arrived.
        got: u64,
    },
    /// A count was repeated or went back: `got` arrived where `expected` was due, `got < expected`.
    Repeat {
        /// The word whose count repeated.
        word: String,
        /// The connection the line arrived on.
        conn: usize,
        /// The count that was due.
        expected: u64,
        /// The count that arrived.
        got: u64,
    },
    /// A word's line arrived on another connection than its earlier lines.
    WrongConnection {
        /// The word that moved.
        word: String,
        /// The connection that carried the word's first line.
        owner: usize,
        /// The connection this line arrived on.
        conn: usize,
        /// The count carried by this line.
        count: u64,
    },
    /// A line that is not `word => count`: not UTF-8, no ` => `, an empty word, or a count that is
    /// not a positive integer.
    Malformed {
        /// The connection the line arrived on.
        conn: usize,
        /// The line (lossily decoded and cut to 200 characters).
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A connection's data ended inside a line (bytes with no final `\n`).
    PartialLine {
        /// The connection that ended mid-line.
        conn: usize,
        /// The unterminated tail (lossily decoded and cut to 200 characters).
        partial: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Gap {
                word,
                conn,
                expected,
                got,
            } => write!(
                f,
                "gap for word {word:?} on connection {conn}: expected count {expected}, got {got}"
            ),
            Violation::Repeat {
                word,
                conn,
                expected,
                got,
            } => write!(
                f,
                "repeated or backward count for word {word:?} on connection {conn}: expected count \
                 {expected}, got {got}"
            ),
            Violation::WrongConnection {
                word,
                owner,
                conn,
                count,
            } => write!(
                f,
                "word {word:?} changed connection: count {count} arrived on connection {conn}, but \
                 its earlier counts came on connection {owner}"
            ),
            Violation::Malformed { conn, line, reason } => {
                write!(
                    f,
                    "malformed output line on connection {conn}: {reason}: {line:?}"
                )
            }
            Violation::PartialLine { conn, partial } => write!(
                f,
                "connection {conn} ended inside a line (no trailing newline): {partial:?}"
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// What a valid output stream held, returned by [`OrderValidator::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Complete lines seen, over all connections.
    pub lines: u64,
    /// Distinct words seen.
    pub words: usize,
    /// The last (highest) count seen for every word, which is the word's total.
    pub counts: HashMap<String, u64>,
}

/// Checks the word-count output contract incrementally, chunk by chunk, over many connections.
///
/// Every chunk is consumed whole even when it holds a violation: after a gap the word's count
/// moves on to the count that arrived, after a repeat it stays, so one fault is reported once and
/// the rest of the stream is still checked. The first violation is kept and returned again by
/// [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct OrderValidator {
    /// Unterminated tail of each connection's data.
    partial: HashMap<usize, Vec<u8>>,
    /// Highest count seen per word.
    counts: HashMap<String, u64>,
    /// Connection that carried each word's first line.
    owners: HashMap<String, usize>,
    lines: u64,
    violations: u64,
    first: Option<Violation>,
}

impl OrderValidator {
    /// Creates a validator that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next `bytes` received on connection `conn` (any id the caller chooses, stable per
    /// connection). Chunks may split lines anywhere; a partial line waits for the connection's next
    /// chunk. Returns the first violation found in this chunk, after consuming all of it.
    pub fn feed(&mut self, conn: usize, bytes: &[u8]) -> Result<(), Violation> {
        let mut result = Ok(());
        let mut rest = bytes;
        let mut pending = self.partial.remove(&conn).unwrap_or_default();
        if !pending.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                None => {
                    pending.extend_from_slice(rest);
                    self.partial.insert(conn, pending);
                    return Ok(());
                }
                Some(i) => {
                    pending.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let r = self.line(conn, &pending);
                    self.note(r, &mut result);
                    pending.clear();
                }
            }
        }
        let mut lines = rest.split(|&b| b == b'\n');
        let tail = lines.next_back().unwrap_or_default();
        for line in lines {
            let r = self.line(conn, line);
            self.note(r, &mut result);
        }
        if !tail.is_empty() {
            pending.extend_from_slice(tail);
            self.partial.insert(conn, pending);
        }
        result
    }

    /// Records a line's outcome: counts violations and keeps the first, overall and per chunk.
    fn note(&mut self, r: Result<(), Violation>, chunk_result: &mut Result<(), Violation>) {
        if let Err(v) = r {
            self.violations += 1;
            if self.first.is_none() {
                self.first = Some(v.clone());
            }
            if chunk_result.is_ok() {
                *chunk_result = Err(v);
            }
        }
    }

    /// Checks one complete line (without its `\n`) from connection `conn`.
    fn line(&mut self, conn: usize, bytes: &[u8]) -> Result<(), Violation> {
        self.lines += 1;
        let malformed = |reason| Violation::Malformed {
            conn,
            line: quote(bytes),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("not valid UTF-8"))?;
        let (word, count) = text
            .rsplit_once(" => ")
            .ok_or_else(|| malformed("no \" => \" separator"))?;
        let count: u64 = count
            .parse()
            .map_err(|_| malformed("count is not an unsigned integer"))?;
        if count == 0 {
            return Err(malformed("count is 0, counts start at 1"));
        }
        if word.is_empty() {
            return Err(malformed("empty word"));
        }
        let Some(seen) = self.counts.get_mut(word) else {
            self.counts.insert(word.to_owned(), count);
            self.owners.insert(word.to_owned(), conn);
            if count != 1 {
                return Err(Violation::Gap {
                    word: word.to_owned(),
                    conn,
                    expected: 1,
                    got: count,
                });
            }
            return Ok(());
        };
        let expected = *seen + 1;
        *seen = (*seen).max(count);
        let owner = self.owners[word];
        if owner != conn {
            Err(Violation::WrongConnection {
                word: word.to_owned(),
                owner,
                conn,
                count,
            })
        } else if count > expected {
            Err(Violation::Gap {
                word: word.to_owned(),
                conn,
                expected,
                got: count,
            })
        } else if count < expected {
            Err(Violation::Repeat {
                word: word.to_owned(),
                conn,
                expected,
                got: count,
            })
        } else {
            Ok(())
        }
    }

    /// Final check: returns the first violation ever found, else a [`Violation::PartialLine`] if a
    /// connection's data ends mid-line (lowest connection id first), else the [`Summary`].
    pub fn finish(&self) -> Result<Summary, Violation> {
        if let Some(v) = &self.first {
            return Err(v.clone());
        }
        if let Some((&conn, partial)) = self
            .partial
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .min_by_key(|(&c, _)| c)
        {
            return Err(Violation::PartialLine {
                conn,
                partial: quote(partial),
            });
        }
        Ok(Summary {
            lines: self.lines,
            words: self.counts.len(),
            counts: self.counts.clone(),
        })
    }

    /// The highest count seen so far for every word (its total once the stream is complete).
    pub fn counts(&self) -> &HashMap<String, u64> {
        &self.counts
    }

    /// Complete lines checked so far, over all connections.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Number of violating lines found so far.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// The first violation found so far, if any.
    pub fn first_violation(&self) -> Option<&Violation> {
        self.first.as_ref()
    }
}

/// Lossily decodes `bytes` for an error message, cut to [`MAX_QUOTE`] characters.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX_QUOTE) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_all(chunks: &[(usize, &str)]) -> (OrderValidator, Vec<Result<(), Violation>>) {
        let mut v = OrderValidator::new();
        let results = chunks
            .iter()
            .map(|(c, s)| v.feed(*c, s.as_bytes()))
            .collect();
        (v, results)
    }

    #[test]
    fn valid_stream_split_anywhere() {
        let (v, results) = feed_all(&[
            (0, "a => 1\nb"),
            (1, "c => 1\n"),
            (0, " => 1\na => 2"),
            (0, "\nb => 2\n"),
            (1, "x => y => 1\nc => 2\n"),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let s = v.finish().unwrap();
        assert_eq!(s.lines, 7);
        assert_eq!(s.words, 4);
        assert_eq!(s.counts["a"], 2);
        assert_eq!(s.counts["x => y"], 1);
        assert_eq!(v.counts()["c"], 2);
    }

    #[test]
    fn gap() {
        let (v, r) = feed_all(&[(0, "a => 1\na => 3\n")]);
        let expect = Violation::Gap {
            word: "a".into(),
            conn: 0,
            expected: 2,
            got: 3,
        };
        assert_eq!(r[0], Err(expect.clone()));
        assert_eq!(v.finish(), Err(expect.clone()));
        assert!(expect.to_string().contains("expected count 2, got 3"));
        // A first line that is not 1 is a gap too.
        let (_, r) = feed_all(&[(2, "b => 2\n")]);
        assert!(matches!(
            &r[0],
            Err(Violation::Gap {
                expected: 1,
                got: 2,
                conn: 2,
                ..
            })
        ));
    }

    #[test]
    fn repeat() {
        let (v, r) = feed_all(&[(0, "a => 1\na => 2\n"), (0, "a => 2\na => 3\n")]);
        assert!(r[0].is_ok());
        let err = r[1].clone().unwrap_err();
        assert_eq!(
            err,
            Violation::Repeat {
                word: "a".into(),
                conn: 0,
                expected: 3,
                got: 2,
            }
        );
        // The stream goes on being checked after the fault: a => 3 was accepted.
        assert_eq!(v.violations(), 1);
        assert_eq!(v.counts()["a"], 3);
        assert!(err.to_string().contains("\"a\""));
    }

    #[test]
    fn wrong_connection() {
        let (v, r) = feed_all(&[(0, "a => 1\n"), (1, "a => 2\n")]);
        assert_eq!(
            r[1],
            Err(Violation::WrongConnection {
                word: "a".into(),
                owner: 0,
                conn: 1,
                count: 2,
            })
        );
        let msg = v.finish().unwrap_err().to_string();
        assert!(
            msg.contains("connection 1") && msg.contains("connection 0"),
            "{msg}"
        );
    }

    #[test]
    fn malformed() {
        for (line, reason) in [
            ("no separator\n", "separator"),
            ("a => x\n", "unsigned integer"),
            ("a => -1\n", "unsigned integer"),
            ("a => 0\n", "count is 0"),
            (" => 1\n", "empty word"),
            ("a => 1\r\n", "unsigned integer"),
        ] {
            let (_, r) = feed_all(&[(3, line)]);
            match &r[0] {
                Err(Violation::Malformed {
                    conn: 3,
                    reason: got,
                    ..
                }) => {
                    assert!(got.contains(reason), "{line:?}: {got}")
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
        let mut v = OrderValidator::new();
        let r = v.feed(0, b"\xff\xfe => 1\n");
        assert!(matches!(
            r,
            Err(Violation::Malformed {
                reason: "not valid UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn partial_line_at_finish() {
        let (v, r) = feed_all(&[(0, "a => 1\n"), (4, "b => 1\nb =")]);
        assert!(r.iter().all(Result::is_ok));
        assert_eq!(
            v.finish(),
            Err(Violation::PartialLine {
                conn: 4,
                partial: "b =".into()
            })
        );
    }

    #[test]
    fn long_lines_are_quoted_short() {
        let line = "x".repeat(1000) + "\n";
        let (_, r) = feed_all(&[(0, &line)]);
        let msg = r[0].clone().unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
    }

    /// Builds one valid output stream per connection for the word sequence `seq`; word `i` goes to
    /// connection `i % conns`.
    fn streams(seq: &[usize], conns: usize) -> Vec<Vec<u8>> {
        let mut counts = HashMap::new();
        let mut out = vec![Vec::new(); conns];
        for &w in seq {
            let c = counts.entry(w).or_insert(0u64);
            *c += 1;
            let word = if w == 0 {
                "x => y".to_string()
            } else {
                format!("w{w}")
            };
            out[w % conns].extend_from_slice(format!("{word} => {c}\n").as_bytes());
        }
        out
    }

    proptest! {
        #[test]
        fn arbitrary_chunking_validates_the_same(
            seq in proptest::collection::vec(0usize..25, 0..300),
            conns in 1usize..4,
            sizes in proptest::collection::vec(1usize..40, 1..20),
            picks in proptest::collection::vec(0usize..4, 1..50),
        ) {
            let streams = streams(&seq, conns);
            let mut whole = OrderValidator::new();
            for (c, s) in streams.iter().enumerate() {
                prop_assert!(whole.feed(c, s).is_ok());
            }
            let expected = whole.finish().unwrap();
            prop_assert_eq!(expected.lines, seq.len() as u64);

            let mut chunked = OrderValidator::new();
            let mut pos = vec![0usize; conns];
            let mut step = 0usize;
            while pos.iter().zip(&streams).any(|(p, s)| *p < s.len()) {
                let start = picks[step % picks.len()] % conns;
                let c = (start..start + conns)
                    .map(|c| c % conns)
                    .find(|&c| pos[c] < streams[c].len())
                    .unwrap();
                let n = sizes[step % sizes.len()];
                step += 1;
                let end = (pos[c] + n).min(streams[c].len());
                prop_assert!(chunked.feed(c, &streams[c][pos[c]..end]).is_ok());
                pos[c] = end;
            }
            prop_assert_eq!(chunked.finish().unwrap(), expected);
        }
    }
}
