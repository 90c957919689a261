//! The two Market Spread input payloads, orders (type 1) and quotes (type 2), byte for byte.
//!
//! Bettong serves Market Spread with Wallaroo's exact wire formats so that its figures stand beside
//! Wallaroo's, and the app, the generator, the reference and the tests must all agree on every
//! offset. So the layouts of `market-spread.md` are written down once, here: [`Order::parse`] and
//! [`Nbbo::parse`] enforce every bad-input rule of the contract (payload length, message type,
//! side) and say exactly what is wrong, and the `encode` functions write the same bytes back.
//! Strings are kept as raw bytes of their stated width (no trimming: the symbol key is 4 bytes).

use thiserror::Error;

/// Payload length of an order (57 bytes with the frame header).
pub const ORDER_LEN: usize = 53;
/// Payload length of a quote (46 bytes with the frame header).
pub const NBBO_LEN: usize = 42;
/// Message type byte of an order.
pub const ORDER_TYPE: u8 = 1;
/// Message type byte of a quote.
pub const NBBO_TYPE: u8 = 2;
/// Size of a frame header: a big-endian `u32` payload length.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why a Market Spread payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// An order payload whose length is not [`ORDER_LEN`].
    #[error("order payload is {len} bytes, expected {ORDER_LEN}")]
    OrderLength {
        /// The length that arrived.
        len: usize,
    },
    /// An order payload whose first byte is not [`ORDER_TYPE`].
    #[error("order payload has message type {found} at offset 0, expected {ORDER_TYPE}")]
    OrderType {
        /// The type byte that arrived.
        found: u8,
    },
    /// An order (or order result) whose side byte is neither 1 (buy) nor 2 (sell).
    #[error("{what} has side {found} at offset {offset}, expected 1 (buy) or 2 (sell)")]
    Side {
        /// `"order payload"` or `"order result payload"`.
        what: &'static str,
        /// Offset of the side byte in that payload.
        offset: usize,
        /// The side byte that arrived.
        found: u8,
    },
    /// A quote payload whose length is not [`NBBO_LEN`].
    #[error("nbbo payload is {len} bytes, expected {NBBO_LEN}")]
    NbboLength {
        /// The length that arrived.
        len: usize,
    },
    /// A quote payload whose first byte is not [`NBBO_TYPE`].
    #[error("nbbo payload has message type {found} at offset 0, expected {NBBO_TYPE}")]
    NbboType {
        /// The type byte that arrived.
        found: u8,
    },
    /// An order-result payload whose length is not 55.
    #[error(
        "order result payload is {len} bytes, expected {}",
        crate::market_spread::result::RESULT_LEN
    )]
    ResultLength {
        /// The length that arrived.
        len: usize,
    },
}

/// The side of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Byte `1`.
    Buy,
    /// Byte `2`.
    Sell,
}

impl Side {
    /// The side of a wire byte, `None` unless it is 1 or 2.
    pub fn from_byte(b: u8) -> Option<Side> {
        match b {
            1 => Some(Side::Buy),
            2 => Some(Side::Sell),
            _ => None,
        }
    }

    /// The wire byte: 1 for buy, 2 for sell.
    pub fn to_byte(self) -> u8 {
        match self {
            Side::Buy => 1,
            Side::Sell => 2,
        }
    }
}

/// An order (message type 1, 53 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    /// Buy or sell.
    pub side: Side,
    /// Account number.
    pub account: u32,
    /// Order id, 6 ASCII bytes as sent.
    pub order_id: [u8; 6],
    /// Stock symbol, 4 ASCII bytes as sent (shorter symbols are padded with spaces by senders).
    pub symbol: [u8; 4],
    /// Order quantity.
    pub qty: f64,
    /// Limit price.
    pub price: f64,
    /// Transaction time, 21 ASCII bytes as sent (`YYYYMMDD-HH:MM:SS.mmm`).
    pub transact_time: [u8; 21],
}

/// A market quote, national best bid and offer (message type 2, 42 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nbbo {
    /// Stock symbol, 4 ASCII bytes as sent.
    pub symbol: [u8; 4],
    /// Transaction time, 21 ASCII bytes as sent.
    pub transact_time: [u8; 21],
    /// Best bid price.
    pub bid: f64,
    /// Best offer price.
    pub offer: f64,
}

/// The `N` bytes of `p` at `at`; `p` was length-checked by the caller.
pub(crate) fn bytes<const N: usize>(p: &[u8], at: usize) -> [u8; N] {
    p[at..at + N].try_into().expect("payload length checked")
}

/// The big-endian double at `at` of `p`.
pub(crate) fn f64_at(p: &[u8], at: usize) -> f64 {
    f64::from_be_bytes(bytes(p, at))
}

/// Appends the 4-byte big-endian header for a payload of `len` bytes.
pub(crate) fn push_header(len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("Market Spread payloads are a few dozen bytes");
    out.extend_from_slice(&len.to_be_bytes());
}

impl Order {
    /// Parses an order payload (without its frame header). Fails if it is not 53 bytes long, its
    /// type byte is not 1, or its side byte is not 1 or 2; every other byte is accepted as is.
    pub fn parse(payload: &[u8]) -> Result<Order, WireError> {
        if payload.len() != ORDER_LEN {
            return Err(WireError::OrderLength { len: payload.len() });
        }
        if payload[0] != ORDER_TYPE {
            return Err(WireError::OrderType { found: payload[0] });
        }
        let side = Side::from_byte(payload[1]).ok_or(WireError::Side {
            what: "order payload",
            offset: 1,
            found: payload[1],
        })?;
        Ok(Order {
            side,
            account: u32::from_be_bytes(bytes(payload, 2)),
            order_id: bytes(payload, 6),
            symbol: bytes(payload, 12),
            qty: f64_at(payload, 16),
            price: f64_at(payload, 24),
            transact_time: bytes(payload, 32),
        })
    }

    /// The 53-byte payload of this order.
    pub fn encode(&self) -> [u8; ORDER_LEN] {
        let mut p = [0u8; ORDER_LEN];
        p[0] = ORDER_TYPE;
        p[1] = self.side.to_byte();
        p[2..6].copy_from_slice(&self.account.to_be_bytes());
        p[6..12].copy_from_slice(&self.order_id);
        p[12..16].copy_from_slice(&self.symbol);
        p[16..24].copy_from_slice(&self.qty.to_be_bytes());
        p[24..32].copy_from_slice(&self.price.to_be_bytes());
        p[32..53].copy_from_slice(&self.transact_time);
        p
    }

    /// Appends this order as a frame (4-byte big-endian length 53, then the payload) to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        push_header(ORDER_LEN, out);
        out.extend_from_slice(&self.encode());
    }
}

impl Nbbo {
    /// Parses a quote payload (without its frame header). Fails if it is not 42 bytes long or its
    /// type byte is not 2; every other byte is accepted as is (any price, NaN included).
    pub fn parse(payload: &[u8]) -> Result<Nbbo, WireError> {
        if payload.len() != NBBO_LEN {
            return Err(WireError::NbboLength { len: payload.len() });
        }
        if payload[0] != NBBO_TYPE {
            return Err(WireError::NbboType { found: payload[0] });
        }
        Ok(Nbbo {
            symbol: bytes(payload, 1),
            transact_time: bytes(payload, 5),
            bid: f64_at(payload, 26),
            offer: f64_at(payload, 34),
        })
    }

    /// The 42-byte payload of this quote.
    pub fn encode(&self) -> [u8; NBBO_LEN] {
        let mut p = [0u8; NBBO_LEN];
        p[0] = NBBO_TYPE;
        p[1..5].copy_from_slice(&self.symbol);
        p[5..26].copy_from_slice(&self.transact_time);
        p[26..34].copy_from_slice(&self.bid.to_be_bytes());
        p[34..42].copy_from_slice(&self.offer.to_be_bytes());
        p
    }

    /// Appends this quote as a frame (4-byte big-endian length 42, then the payload) to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        push_header(NBBO_LEN, out);
        out.extend_from_slice(&self.encode());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn order(symbol: &[u8; 4], id: &[u8; 6]) -> Order {
        Order {
            side: Side::Sell,
            account: 0x0102_0304,
            order_id: *id,
            symbol: *symbol,
            qty: 900.0,
            price: 12.5,
            transact_time: *b"20150818-14:30:00.123",
        }
    }

    pub(crate) fn nbbo(symbol: &[u8; 4], bid: f64, offer: f64) -> Nbbo {
        Nbbo {
            symbol: *symbol,
            transact_time: *b"20150818-14:29:59.999",
            bid,
            offer,
        }
    }

    #[test]
    fn order_layout_matches_the_contract() {
        let o = order(b"AA  ", b"ABC123");
        let p = o.encode();
        assert_eq!(p[0], 1);
        assert_eq!(p[1], 2);
        assert_eq!(&p[2..6], &[1, 2, 3, 4]);
        assert_eq!(&p[6..12], b"ABC123");
        assert_eq!(&p[12..16], b"AA  ");
        assert_eq!(&p[16..24], &900.0f64.to_be_bytes());
        assert_eq!(&p[24..32], &12.5f64.to_be_bytes());
        assert_eq!(&p[32..53], b"20150818-14:30:00.123");
        assert_eq!(Order::parse(&p), Ok(o));
        let mut f = Vec::new();
        o.encode_frame(&mut f);
        assert_eq!(&f[..4], &53u32.to_be_bytes());
        assert_eq!(&f[4..], &p[..]);
    }

    #[test]
    fn nbbo_layout_matches_the_contract() {
        let q = nbbo(b"MSFT", 1.5, -2.25);
        let p = q.encode();
        assert_eq!(p[0], 2);
        assert_eq!(&p[1..5], b"MSFT");
        assert_eq!(&p[5..26], b"20150818-14:29:59.999");
        assert_eq!(&p[26..34], &1.5f64.to_be_bytes());
        assert_eq!(&p[34..42], &(-2.25f64).to_be_bytes());
        assert_eq!(Nbbo::parse(&p), Ok(q));
        let mut f = Vec::new();
        q.encode_frame(&mut f);
        assert_eq!(&f[..4], &42u32.to_be_bytes());
        assert_eq!(&f[4..], &p[..]);
    }

    #[test]
    fn bad_orders_are_refused_with_the_reason() {
        let good = order(b"AA  ", b"000001").encode();
        for len in [0, 1, 52, 54, 57] {
            let mut p = good.to_vec();
            p.resize(len, 0);
            let err = Order::parse(&p).unwrap_err();
            assert_eq!(err, WireError::OrderLength { len });
            assert_eq!(
                err.to_string(),
                format!("order payload is {len} bytes, expected 53")
            );
        }
        for t in [0u8, 2, 3, 255] {
            let mut p = good;
            p[0] = t;
            let err = Order::parse(&p).unwrap_err();
            assert_eq!(err, WireError::OrderType { found: t });
            assert!(err.to_string().contains(&format!("message type {t}")));
        }
        for s in [0u8, 3, b'1', 255] {
            let mut p = good;
            p[1] = s;
            let err = Order::parse(&p).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("order payload has side {s} at offset 1, expected 1 (buy) or 2 (sell)")
            );
        }
        let mut buy = good;
        buy[1] = 1;
        assert_eq!(Order::parse(&buy).unwrap().side, Side::Buy);
        // A quote sent on the Orders stream is refused by its length first.
        let q = nbbo(b"AA  ", 1.0, 2.0).encode();
        assert_eq!(
            Order::parse(&q),
            Err(WireError::OrderLength { len: NBBO_LEN })
        );
    }

    #[test]
    fn bad_quotes_are_refused_with_the_reason() {
        let good = nbbo(b"AA  ", 1.0, 2.0).encode();
        for len in [0, 1, 41, 43, 46, 53] {
            let mut p = good.to_vec();
            p.resize(len, 0);
            let err = Nbbo::parse(&p).unwrap_err();
            assert_eq!(err, WireError::NbboLength { len });
            assert_eq!(
                err.to_string(),
                format!("nbbo payload is {len} bytes, expected 42")
            );
        }
        for t in [0u8, 1, 3, 255] {
            let mut p = good;
            p[0] = t;
            assert_eq!(Nbbo::parse(&p), Err(WireError::NbboType { found: t }));
        }
        let o = order(b"AA  ", b"000001").encode();
        assert_eq!(
            Nbbo::parse(&o),
            Err(WireError::NbboLength { len: ORDER_LEN })
        );
    }

    #[test]
    fn strings_are_kept_raw_and_non_finite_prices_pass() {
        let mut p = nbbo(b"AA  ", 0.0, 0.0).encode();
        p[1..5].copy_from_slice(&[0, b' ', 0xff, b'a']);
        p[26..34].copy_from_slice(&f64::NAN.to_be_bytes());
        p[34..42].copy_from_slice(&f64::NEG_INFINITY.to_be_bytes());
        let q = Nbbo::parse(&p).unwrap();
        assert_eq!(q.symbol, [0, b' ', 0xff, b'a']);
        assert!(q.bid.is_nan());
        assert_eq!(q.offer, f64::NEG_INFINITY);
        assert_eq!(q.encode(), p);
    }

    fn any_side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Side::Buy), Just(Side::Sell)]
    }

    proptest! {
        #[test]
        fn order_round_trips(
            side in any_side(), account: u32, order_id: [u8; 6], symbol: [u8; 4],
            qty_bits: u64, price_bits: u64, transact_time: [u8; 21],
        ) {
            let o = Order {
                side, account, order_id, symbol,
                qty: f64::from_bits(qty_bits), price: f64::from_bits(price_bits), transact_time,
            };
            let p = o.encode();
            let back = Order::parse(&p).unwrap();
            // Compared through the bytes so that NaN payloads count as equal.
            prop_assert_eq!(back.encode(), p);
            prop_assert_eq!(back.qty.to_bits(), qty_bits);
            prop_assert_eq!(back.price.to_bits(), price_bits);
        }

        #[test]
        fn nbbo_round_trips(
            symbol: [u8; 4], transact_time: [u8; 21], bid_bits: u64, offer_bits: u64,
        ) {
            let q = Nbbo {
                symbol, transact_time, bid: f64::from_bits(bid_bits), offer: f64::from_bits(offer_bits),
            };
            let p = q.encode();
            let back = Nbbo::parse(&p).unwrap();
            prop_assert_eq!(back.encode(), p);
            prop_assert_eq!(back.bid.to_bits(), bid_bits);
        }

        #[test]
        fn any_bytes_parse_or_refuse_without_panic(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(o) = Order::parse(&p) {
                prop_assert_eq!(&o.encode()[..], &p[..]);
            }
            if let Ok(q) = Nbbo::parse(&p) {
                prop_assert_eq!(&q.encode()[..], &p[..]);
            }
        }
    }
}
