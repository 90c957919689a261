//! Incremental checker of the Market Spread output: framed 55-byte order results over many sink
//! connections.
//!
//! The app's results arrive as arbitrary TCP chunks (a frame may be split anywhere) on one
//! connection per core. The contract says every result is a 55-byte frame, all results of a
//! symbol leave on one connection, and in the order the symbol's orders were received. A test
//! that knows which orders should produce results (see [`reference`](super::reference)) can also
//! check that exactly those arrived: in order per symbol when the orders were sent on one
//! connection, or as a set when several sender connections interleaved them. [`ResultChecker`]
//! checks all that chunk by chunk without storing the stream; [`check_results`] is the one-shot
//! form for a single connection's bytes.

use std::collections::HashMap;

use thiserror::Error;

use crate::market_spread::result::{OrderResult, RESULT_LEN};
use crate::market_spread::wire::FRAME_HEADER_LEN;

/// A frame: header and payload.
const FRAME_LEN: usize = FRAME_HEADER_LEN + RESULT_LEN;

/// A symbol or order id shown as text (lossy, with the padding spaces visible).
fn text(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// A breach of the Market Spread output contract, found by [`ResultChecker`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResultViolation {
    /// A frame header announcing another length than 55; the rest of that connection is not
    /// checked, since its frame boundaries are lost.
    #[error(
        "connection {conn}: the frame at byte offset {offset} announces {len} payload bytes, \
         expected {RESULT_LEN}; the rest of this connection is not checked"
    )]
    BadLength {
        /// The connection.
        conn: usize,
        /// Byte offset of the frame in the connection's stream.
        offset: u64,
        /// The length in the header.
        len: u32,
    },
    /// A 55-byte payload that is not a valid result (a bad side byte).
    #[error(
        "connection {conn}: the frame at byte offset {offset} is not an order result: {reason}"
    )]
    BadPayload {
        /// The connection.
        conn: usize,
        /// Byte offset of the frame in the connection's stream.
        offset: u64,
        /// What is wrong, from [`OrderResult::parse`].
        reason: String,
    },
    /// A result for a symbol whose earlier results came on another connection.
    #[error(
        "symbol {} changed connection: order {} arrived on connection {conn} (byte offset \
         {offset}), but the symbol's earlier results came on connection {owner}",
        text(symbol),
        text(order_id)
    )]
    WrongConnection {
        /// The symbol.
        symbol: [u8; 4],
        /// The order id of this result.
        order_id: [u8; 6],
        /// The connection the symbol's first result came on.
        owner: usize,
        /// The connection this result came on.
        conn: usize,
        /// Byte offset of the frame.
        offset: u64,
    },
    /// A result that is not expected at all, or arrived more often than expected.
    #[error(
        "unexpected result for symbol {} order {} on connection {conn} at byte offset {offset}: \
         that order should not produce a result (or already did as often as expected)",
        text(symbol),
        text(order_id)
    )]
    Unexpected {
        /// The symbol.
        symbol: [u8; 4],
        /// The order id.
        order_id: [u8; 6],
        /// The connection.
        conn: usize,
        /// Byte offset of the frame.
        offset: u64,
    },
    /// A symbol's results came out of order: `got` arrived while `expected` was due.
    #[error(
        "results of symbol {} out of order on connection {conn} at byte offset {offset}: \
         expected order {} next, got order {} (a later one)",
        text(symbol),
        text(expected),
        text(got)
    )]
    OutOfOrder {
        /// The symbol.
        symbol: [u8; 4],
        /// The order id that was due.
        expected: [u8; 6],
        /// The order id that arrived.
        got: [u8; 6],
        /// The connection.
        conn: usize,
        /// Byte offset of the frame.
        offset: u64,
    },
    /// Expected results never arrived (reported by [`ResultChecker::finish`]).
    #[error(
        "{missing} expected results never arrived, over {symbols} symbols; the first is symbol \
         {} order {}",
        text(first_symbol),
        text(first_order)
    )]
    Missing {
        /// Results missing in total.
        missing: u64,
        /// Symbols with a missing result.
        symbols: usize,
        /// A symbol with a missing result (the smallest).
        first_symbol: [u8; 4],
        /// Its first missing order id.
        first_order: [u8; 6],
    },
    /// A connection's data ended inside a frame (reported by [`ResultChecker::finish`]).
    #[error("connection {conn} ended inside a frame: {partial} bytes after byte offset {offset}")]
    PartialFrame {
        /// The connection.
        conn: usize,
        /// Byte offset of the unfinished frame.
        offset: u64,
        /// Bytes of it that arrived.
        partial: usize,
    },
}

/// What a valid result stream held, returned by [`ResultChecker::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultSummary {
    /// Results (frames) received over all connections.
    pub results: u64,
    /// Connections that sent data.
    pub connections: usize,
    /// Results per symbol.
    pub per_symbol: HashMap<[u8; 4], u64>,
}

/// The results a checker expects.
#[derive(Debug, Default)]
enum Expected {
    /// Any results.
    #[default]
    Any,
    /// Per symbol, the order ids in order and the index of the next one due.
    Ordered(HashMap<[u8; 4], (Vec<[u8; 6]>, usize)>),
    /// How many more times each (symbol, order id) may arrive.
    Unordered(HashMap<([u8; 4], [u8; 6]), u64>),
}

/// One connection's progress.
#[derive(Debug, Default)]
struct Conn {
    /// Bytes of an unfinished frame.
    carry: Vec<u8>,
    /// Offset in the connection's stream of the first byte not yet consumed (carry included).
    offset: u64,
    /// Set after a bad length: the rest is ignored.
    broken: bool,
}

/// Checks the Market Spread output incrementally, chunk by chunk, over many connections.
///
/// Every chunk is consumed whole even when it holds a violation, so one fault is reported once
/// and the rest of the stream is still checked; the first violation is kept and returned again by
/// [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct ResultChecker {
    conns: HashMap<usize, Conn>,
    owners: HashMap<[u8; 4], usize>,
    per_symbol: HashMap<[u8; 4], u64>,
    expected: Expected,
    results: u64,
    violations: u64,
    first: Option<ResultViolation>,
}

impl ResultChecker {
    /// A checker of the framing and of one connection per symbol, expecting any results.
    pub fn new() -> Self {
        Self::default()
    }

    /// A checker that also expects exactly the results `expected` (`(symbol, order id)`, as from
    /// [`expected_results`](super::reference::expected_results)). With `ordered`, each symbol's
    /// results must come in the order listed (orders sent on one connection); without, in any
    /// order, each as many times as listed.
    pub fn expecting(expected: &[([u8; 4], [u8; 6])], ordered: bool) -> Self {
        let expected = if ordered {
            let mut m: HashMap<[u8; 4], (Vec<[u8; 6]>, usize)> = HashMap::new();
            for (s, id) in expected {
                m.entry(*s).or_default().0.push(*id);
            }
            Expected::Ordered(m)
        } else {
            let mut m: HashMap<([u8; 4], [u8; 6]), u64> = HashMap::new();
            for key in expected {
                *m.entry(*key).or_default() += 1;
            }
            Expected::Unordered(m)
        };
        ResultChecker {
            expected,
            ..Self::default()
        }
    }

    /// Results received so far.
    pub fn results(&self) -> u64 {
        self.results
    }

    /// Violations found so far.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// Feeds the next `bytes` received on connection `conn` (any id, stable per connection).
    /// Chunks may split frames anywhere. Returns the first violation found in this chunk, after
    /// consuming all of it.
    pub fn feed(&mut self, conn: usize, bytes: &[u8]) -> Result<(), ResultViolation> {
        let mut c = self.conns.remove(&conn).unwrap_or_default();
        let mut chunk_result = Ok(());
        let mut rest = bytes;
        if !c.carry.is_empty() && !c.broken {
            // Complete the header, then the frame, from the front of this chunk.
            let want = if c.carry.len() < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                FRAME_LEN
            };
            let take = (want - c.carry.len()).min(rest.len());
            c.carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if c.carry.len() == FRAME_HEADER_LEN {
                let take = (FRAME_LEN - FRAME_HEADER_LEN).min(rest.len());
                if self.header_ok(conn, &mut c, &mut chunk_result) {
                    c.carry.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
            if c.carry.len() == FRAME_LEN {
                let frame = std::mem::take(&mut c.carry);
                let r = self.frame(conn, c.offset, &frame[FRAME_HEADER_LEN..]);
                self.note(r, &mut chunk_result);
                c.offset += FRAME_LEN as u64;
            }
        }
        while !c.broken && c.carry.is_empty() && rest.len() >= FRAME_HEADER_LEN {
            c.carry.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
            if !self.header_ok(conn, &mut c, &mut chunk_result) {
                break;
            }
            c.carry.clear();
            if rest.len() < FRAME_LEN {
                break;
            }
            let r = self.frame(conn, c.offset, &rest[FRAME_HEADER_LEN..FRAME_LEN]);
            self.note(r, &mut chunk_result);
            c.offset += FRAME_LEN as u64;
            rest = &rest[FRAME_LEN..];
        }
        if !c.broken {
            c.carry.extend_from_slice(rest);
        }
        self.conns.insert(conn, c);
        chunk_result
    }

    /// Checks the complete header in `c.carry`; on a bad length records it and marks `c` broken.
    fn header_ok(
        &mut self,
        conn: usize,
        c: &mut Conn,
        chunk_result: &mut Result<(), ResultViolation>,
    ) -> bool {
        let len = u32::from_be_bytes(
            c.carry[..FRAME_HEADER_LEN]
                .try_into()
                .expect("4-byte header"),
        );
        if len as usize == RESULT_LEN {
            return true;
        }
        let v = ResultViolation::BadLength {
            conn,
            offset: c.offset,
            len,
        };
        self.note(Err(v), chunk_result);
        c.broken = true;
        c.carry = Vec::new();
        false
    }

    /// Checks one 55-byte payload that started at `offset` on `conn`.
    fn frame(&mut self, conn: usize, offset: u64, payload: &[u8]) -> Result<(), ResultViolation> {
        let r = OrderResult::parse(payload).map_err(|e| ResultViolation::BadPayload {
            conn,
            offset,
            reason: e.to_string(),
        })?;
        self.results += 1;
        *self.per_symbol.entry(r.symbol).or_default() += 1;
        let owner = *self.owners.entry(r.symbol).or_insert(conn);
        let moved = (owner != conn).then_some(ResultViolation::WrongConnection {
            symbol: r.symbol,
            order_id: r.order_id,
            owner,
            conn,
            offset,
        });
        let unexpected = ResultViolation::Unexpected {
            symbol: r.symbol,
            order_id: r.order_id,
            conn,
            offset,
        };
        let expectation = match &mut self.expected {
            Expected::Any => Ok(()),
            Expected::Unordered(left) => match left.get_mut(&(r.symbol, r.order_id)) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Ok(())
                }
                _ => Err(unexpected),
            },
            Expected::Ordered(per) => match per.get_mut(&r.symbol) {
                None => Err(unexpected),
                Some((ids, next)) => match ids[*next..].iter().position(|id| *id == r.order_id) {
                    None => Err(unexpected),
                    Some(0) => {
                        *next += 1;
                        Ok(())
                    }
                    Some(skip) => {
                        let expected = ids[*next];
                        *next += skip + 1;
                        Err(ResultViolation::OutOfOrder {
                            symbol: r.symbol,
                            expected,
                            got: r.order_id,
                            conn,
                            offset,
                        })
                    }
                },
            },
        };
        match moved {
            Some(v) => {
                if let Err(e) = expectation {
                    // Both count; the connection change is reported first.
                    self.violations += 1;
                    self.first.get_or_insert(e);
                }
                Err(v)
            }
            None => expectation,
        }
    }

    /// Records a frame's outcome: counts violations and keeps the first, overall and per chunk.
    fn note(
        &mut self,
        r: Result<(), ResultViolation>,
        chunk_result: &mut Result<(), ResultViolation>,
    ) {
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

    /// The verdict once every connection has ended: the first violation seen while feeding, else
    /// a connection that ended inside a frame, else expected results that never arrived; or the
    /// summary of a valid stream.
    pub fn finish(&self) -> Result<ResultSummary, ResultViolation> {
        if let Some(v) = &self.first {
            return Err(v.clone());
        }
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        if let Some((&conn, c)) = conns.iter().find(|(_, c)| !c.carry.is_empty()) {
            return Err(ResultViolation::PartialFrame {
                conn,
                offset: c.offset,
                partial: c.carry.len(),
            });
        }
        let mut missing: Vec<([u8; 4], [u8; 6], u64)> = match &self.expected {
            Expected::Any => Vec::new(),
            Expected::Ordered(per) => per
                .iter()
                .filter(|(_, (ids, next))| *next < ids.len())
                .map(|(s, (ids, next))| (*s, ids[*next], (ids.len() - next) as u64))
                .collect(),
            Expected::Unordered(left) => left
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|((s, id), n)| (*s, *id, *n))
                .collect(),
        };
        if !missing.is_empty() {
            missing.sort();
            let mut symbols: Vec<_> = missing.iter().map(|m| m.0).collect();
            symbols.dedup();
            return Err(ResultViolation::Missing {
                missing: missing.iter().map(|m| m.2).sum(),
                symbols: symbols.len(),
                first_symbol: missing[0].0,
                first_order: missing[0].1,
            });
        }
        Ok(ResultSummary {
            results: self.results,
            connections: self.conns.len(),
            per_symbol: self.per_symbol.clone(),
        })
    }
}

/// Checks the bytes one sink connection received: every frame a valid 55-byte result, no partial
/// frame at the end, and, with `expected`, exactly those `(symbol, order id)` results in that
/// order per symbol.
pub fn check_results(
    stream_bytes: &[u8],
    expected: Option<&[([u8; 4], [u8; 6])]>,
) -> Result<ResultSummary, ResultViolation> {
    let mut checker = match expected {
        Some(e) => ResultChecker::expecting(e, true),
        None => ResultChecker::new(),
    };
    checker.feed(0, stream_bytes)?;
    checker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market_spread::result::encode_result;
    use crate::market_spread::state::SymbolState;
    use crate::market_spread::wire::tests::order;

    fn results(items: &[(&[u8; 4], &[u8; 6])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, id) in items {
            encode_result(&order(s, id), &SymbolState::default(), 42, &mut out);
        }
        out
    }

    const A: &[u8; 4] = b"AA  ";
    const B: &[u8; 4] = b"B   ";

    #[test]
    fn valid_stream_in_any_split() {
        let bytes = results(&[(A, b"000001"), (B, b"000002"), (A, b"000003")]);
        let expected = [(*A, *b"000001"), (*B, *b"000002"), (*A, *b"000003")];
        let s = check_results(&bytes, Some(&expected)).unwrap();
        assert_eq!(s.results, 3);
        assert_eq!(s.per_symbol[A], 2);
        // Every way of cutting the stream in three gives the same verdict.
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut c = ResultChecker::expecting(&expected, true);
                c.feed(5, &bytes[..i]).unwrap();
                c.feed(5, &bytes[i..j]).unwrap();
                c.feed(5, &bytes[j..]).unwrap();
                assert_eq!(c.finish().unwrap().results, 3, "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn empty_stream_is_valid_without_expectations() {
        assert_eq!(check_results(&[], None).unwrap().results, 0);
    }

    #[test]
    fn out_of_order_missing_and_unexpected() {
        let expected = [(*A, *b"000001"), (*A, *b"000002"), (*B, *b"000003")];
        let bytes = results(&[(A, b"000002"), (B, b"000003")]);
        let err = check_results(&bytes, Some(&expected)).unwrap_err();
        assert!(matches!(err, ResultViolation::OutOfOrder { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "results of symbol \"AA  \" out of order on connection 0 at byte offset 0: expected \
             order \"000001\" next, got order \"000002\" (a later one)"
        );
        // In any order, the same results are fine...
        let mut c = ResultChecker::expecting(&expected, false);
        c.feed(
            0,
            &results(&[(A, b"000002"), (B, b"000003"), (A, b"000001")]),
        )
        .unwrap();
        assert_eq!(c.finish().unwrap().results, 3);
        // ...but a missing one is not.
        let mut c = ResultChecker::expecting(&expected, false);
        c.feed(0, &bytes).unwrap();
        let err = c.finish().unwrap_err().to_string();
        assert!(err.starts_with("1 expected results never arrived"), "{err}");
        let err = check_results(&results(&[(A, b"000001")]), Some(&expected))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 expected results never arrived, over 2 symbols"),
            "{err}"
        );
        // Duplicates and strangers are unexpected.
        let dup = results(&[(A, b"000001"), (A, b"000001")]);
        let err = check_results(&dup, Some(&expected)).unwrap_err();
        assert!(
            matches!(err, ResultViolation::Unexpected { offset: 59, .. }),
            "{err}"
        );
        let mut c = ResultChecker::expecting(&expected, false);
        let err = c.feed(0, &results(&[(b"ZZZZ", b"000009")])).unwrap_err();
        assert!(err
            .to_string()
            .contains("unexpected result for symbol \"ZZZZ\""));
    }

    #[test]
    fn symbols_stay_on_one_connection() {
        let mut c = ResultChecker::new();
        c.feed(0, &results(&[(A, b"000001")])).unwrap();
        c.feed(1, &results(&[(B, b"000002")])).unwrap();
        let err = c.feed(1, &results(&[(A, b"000003")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "symbol \"AA  \" changed connection: order \"000003\" arrived on connection 1 (byte \
             offset 59), but the symbol's earlier results came on connection 0"
        );
        assert_eq!(c.violations(), 1);
        assert_eq!(c.finish().unwrap_err(), err);
    }

    #[test]
    fn framing_faults() {
        let mut bytes = results(&[(A, b"000001"), (A, b"000002")]);
        // A partial frame at the end.
        let err = check_results(&bytes[..bytes.len() - 1], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "connection 0 ended inside a frame: 58 bytes after byte offset 59"
        );
        // A bad side byte: that frame is refused, the next one is still read.
        bytes[4] = 9;
        let mut c = ResultChecker::new();
        let err = c.feed(3, &bytes).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "connection 3: the frame at byte offset 0 is not an order result: order result \
                 payload has side 9"
            ),
            "{err}"
        );
        assert_eq!(c.results(), 1);
        // A bad length: the rest of the connection is ignored.
        let mut bytes = results(&[(A, b"000001"), (A, b"000002"), (A, b"000003")]);
        bytes[59..63].copy_from_slice(&54u32.to_be_bytes());
        let mut c = ResultChecker::new();
        // The header is split: the fault shows once it is whole.
        c.feed(0, &bytes[..61]).unwrap();
        let err = c.feed(0, &bytes[61..70]).unwrap_err();
        c.feed(0, &bytes[70..]).unwrap();
        assert_eq!(
            err.to_string(),
            "connection 0: the frame at byte offset 59 announces 54 payload bytes, expected 55; \
             the rest of this connection is not checked"
        );
        assert_eq!((c.results(), c.violations()), (1, 1));
    }
}
