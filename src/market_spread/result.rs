//! The order result: the 55-byte frame Market Spread sends to its sink for each rejected order.
//!
//! The app writes these frames at millions per second, so [`encode_result`] appends straight into
//! the caller's output buffer without allocating; the receiving tools and tests read them back with
//! [`OrderResult::parse`]. Both follow the result table of `market-spread.md`.

use crate::market_spread::state::SymbolState;
use crate::market_spread::wire::{bytes, f64_at, push_header, Order, Side, WireError};

/// Payload length of an order result (59 bytes with the frame header).
pub const RESULT_LEN: usize = 55;

/// Appends the result frame for `order`, checked against `state`, to `out`: the 4-byte big-endian
/// length 55, then side, account, order id, symbol, quantity, price, the state's last bid and
/// offer, and `timestamp_ns` (wall-clock nanoseconds since the Unix epoch).
pub fn encode_result(order: &Order, state: &SymbolState, timestamp_ns: u64, out: &mut Vec<u8>) {
    out.reserve(4 + RESULT_LEN);
    push_header(RESULT_LEN, out);
    out.push(order.side.to_byte());
    out.extend_from_slice(&order.account.to_be_bytes());
    out.extend_from_slice(&order.order_id);
    out.extend_from_slice(&order.symbol);
    out.extend_from_slice(&order.qty.to_be_bytes());
    out.extend_from_slice(&order.price.to_be_bytes());
    out.extend_from_slice(&state.last_bid.to_be_bytes());
    out.extend_from_slice(&state.last_offer.to_be_bytes());
    out.extend_from_slice(&timestamp_ns.to_be_bytes());
}

/// An order result as received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderResult {
    /// The order's side.
    pub side: Side,
    /// The order's account.
    pub account: u32,
    /// The order's id.
    pub order_id: [u8; 6],
    /// The order's symbol.
    pub symbol: [u8; 4],
    /// The order's quantity.
    pub qty: f64,
    /// The order's price.
    pub price: f64,
    /// The symbol's last bid when the order was checked.
    pub bid: f64,
    /// The symbol's last offer when the order was checked.
    pub offer: f64,
    /// Wall-clock nanoseconds since the Unix epoch when the result was made.
    pub timestamp_ns: u64,
}

impl OrderResult {
    /// Parses a result payload (without its frame header). Fails if it is not 55 bytes long or
    /// its side byte is not 1 or 2.
    pub fn parse(payload: &[u8]) -> Result<OrderResult, WireError> {
        if payload.len() != RESULT_LEN {
            return Err(WireError::ResultLength { len: payload.len() });
        }
        let side = Side::from_byte(payload[0]).ok_or(WireError::Side {
            what: "order result payload",
            offset: 0,
            found: payload[0],
        })?;
        Ok(OrderResult {
            side,
            account: u32::from_be_bytes(bytes(payload, 1)),
            order_id: bytes(payload, 5),
            symbol: bytes(payload, 11),
            qty: f64_at(payload, 15),
            price: f64_at(payload, 23),
            bid: f64_at(payload, 31),
            offer: f64_at(payload, 39),
            timestamp_ns: u64::from_be_bytes(bytes(payload, 47)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market_spread::wire::tests::order;
    use proptest::prelude::*;

    #[test]
    fn result_layout_matches_the_contract() {
        let o = order(b"IBM ", b"X00042");
        let s = SymbolState {
            reject: true,
            last_bid: 150.25,
            last_offer: 151.0,
        };
        let mut out = vec![9];
        encode_result(&o, &s, 0x1122_3344_5566_7788, &mut out);
        assert_eq!(out.len(), 1 + 4 + 55);
        let f = &out[1..];
        assert_eq!(&f[..4], &55u32.to_be_bytes());
        let p = &f[4..];
        assert_eq!(p[0], 2);
        assert_eq!(&p[1..5], &[1, 2, 3, 4]);
        assert_eq!(&p[5..11], b"X00042");
        assert_eq!(&p[11..15], b"IBM ");
        assert_eq!(&p[15..23], &900.0f64.to_be_bytes());
        assert_eq!(&p[23..31], &12.5f64.to_be_bytes());
        assert_eq!(&p[31..39], &150.25f64.to_be_bytes());
        assert_eq!(&p[39..47], &151.0f64.to_be_bytes());
        assert_eq!(&p[47..55], &0x1122_3344_5566_7788u64.to_be_bytes());
        let r = OrderResult::parse(p).unwrap();
        assert_eq!(
            r,
            OrderResult {
                side: Side::Sell,
                account: 0x0102_0304,
                order_id: *b"X00042",
                symbol: *b"IBM ",
                qty: 900.0,
                price: 12.5,
                bid: 150.25,
                offer: 151.0,
                timestamp_ns: 0x1122_3344_5566_7788,
            }
        );
    }

    #[test]
    fn bad_results_are_refused_with_the_reason() {
        let mut out = Vec::new();
        encode_result(
            &order(b"A   ", b"000001"),
            &SymbolState::default(),
            1,
            &mut out,
        );
        let p = &out[4..];
        assert_eq!(
            OrderResult::parse(&p[..54]).unwrap_err().to_string(),
            "order result payload is 54 bytes, expected 55"
        );
        let mut bad = p.to_vec();
        bad[0] = 0;
        assert_eq!(
            OrderResult::parse(&bad).unwrap_err().to_string(),
            "order result payload has side 0 at offset 0, expected 1 (buy) or 2 (sell)"
        );
    }

    proptest! {
        #[test]
        fn result_round_trips(
            buy: bool, account: u32, order_id: [u8; 6], symbol: [u8; 4],
            qty: f64, price: f64, bid_bits: u64, offer_bits: u64, ts: u64,
        ) {
            let mut o = order(&symbol, &order_id);
            o.side = if buy { Side::Buy } else { Side::Sell };
            o.account = account;
            o.qty = qty;
            o.price = price;
            let s = SymbolState {
                reject: true,
                last_bid: f64::from_bits(bid_bits),
                last_offer: f64::from_bits(offer_bits),
            };
            let mut out = Vec::new();
            encode_result(&o, &s, ts, &mut out);
            let r = OrderResult::parse(&out[4..]).unwrap();
            prop_assert_eq!(r.side, o.side);
            prop_assert_eq!(r.account, account);
            prop_assert_eq!(r.order_id, order_id);
            prop_assert_eq!(r.symbol, symbol);
            prop_assert_eq!(r.qty.to_bits(), qty.to_bits());
            prop_assert_eq!(r.price.to_bits(), price.to_bits());
            prop_assert_eq!(r.bid.to_bits(), bid_bits);
            prop_assert_eq!(r.offer.to_bits(), offer_bits);
            prop_assert_eq!(r.timestamp_ns, ts);
        }
    }
}
