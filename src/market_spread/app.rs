//! The Market Spread application on the engine, written only against the public
//! `bettong-engine` API, as a user's app would be.
//!
//! Two typed sources, each with its own decoder: Orders (source 0) and Nbbo (source 1). Both
//! are keyed by the 4-byte symbol and routed as one [`Msg`] enum into one state step (the
//! engine's `merge`, Wallaroo's merged partition), whose state per symbol is a
//! [`SymbolState`]. A quote updates the state; an order whose symbol rejects produces an order
//! result, encoded on the symbol's owner core into the 55-byte result frame.

use bettong_engine::{DecodeError, Persist, PersistApp, Pipeline};

use super::wire::{Nbbo, Order, WireError, NBBO_LEN, ORDER_LEN};
use super::{encode_result, SymbolState};

/// What the two sources route to a symbol's owner core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Msg {
    /// An order to check.
    Order(Order),
    /// A quote to apply.
    Quote(Nbbo),
}

/// The engine's rejection for a wire error: the rule broken and the value that broke it.
pub fn reject(e: WireError) -> DecodeError {
    match e {
        WireError::OrderLength { len } => {
            DecodeError::new("order payload is not 53 bytes").with_value(len as u64)
        }
        WireError::OrderType { found } => {
            DecodeError::new("order payload's message type is not 1").with_value(found.into())
        }
        WireError::Side { found, .. } => {
            DecodeError::new("order's side is neither 1 (buy) nor 2 (sell)")
                .with_value(found.into())
        }
        WireError::NbboLength { len } => {
            DecodeError::new("nbbo payload is not 42 bytes").with_value(len as u64)
        }
        WireError::NbboType { found } => {
            DecodeError::new("nbbo payload's message type is not 2").with_value(found.into())
        }
        WireError::ResultLength { len } => {
            DecodeError::new("not an order or a quote").with_value(len as u64)
        }
    }
}

/// Wall-clock nanoseconds since the Unix epoch (`CLOCK_REALTIME`), for the result timestamp.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The Market Spread pipeline: source 0 is Orders, source 1 is Nbbo.
///
/// ```
/// use bettong::market_spread::{app::market_spread, Nbbo, Order, OrderResult, Side};
/// use bettong_engine::{Engine, MemorySource, SinkConfig, SourceConfig};
/// let quote = Nbbo { symbol: *b"IBM ", transact_time: [b'0'; 21], bid: 100.0, offer: 101.0 };
/// let order = Order {
///     side: Side::Buy, account: 7, order_id: *b"000001", symbol: *b"IBM ",
///     qty: 10.0, price: 100.5, transact_time: [b'0'; 21],
/// };
/// let report = Engine::new().cores(1).run(
///     market_spread(),
///     [
///         SourceConfig::Memory(MemorySource::from_frames([order.encode()])),
///         SourceConfig::Memory(MemorySource::from_frames([quote.encode()])),
///     ],
///     SinkConfig::Memory,
/// )?;
/// // The spread is 1.0 >= 0.05: the order is rejected, so one result.
/// let out = &report.outputs[0];
/// assert_eq!(out.len(), 4 + 55);
/// let r = OrderResult::parse(&out[4..]).unwrap();
/// assert_eq!(&r.order_id, b"000001");
/// # Ok::<(), bettong_engine::Error>(())
/// ```
pub fn market_spread() -> impl PersistApp {
    let orders = Pipeline::decode(|frame: &[u8]| Order::parse(frame).map_err(reject))
        .key_by(|o: Order| (o.symbol, Msg::Order(o)));
    let quotes = Pipeline::decode(|frame: &[u8]| Nbbo::parse(frame).map_err(reject))
        .key_by(|q: Nbbo| (q.symbol, Msg::Quote(q)));
    orders
        .merge(quotes)
        .state(
            |_symbol: &[u8; 4], state: &mut SymbolState, msg: Msg| match msg {
                Msg::Quote(q) => {
                    state.apply_quote(&q);
                    None
                }
                Msg::Order(o) => state.check_order(&o).then_some((o, *state)),
            },
        )
        .encode(|_symbol, (order, state), out| encode_result(order, state, now_ns(), out))
}

impl Persist for Msg {
    fn persist(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Order(o) => out.extend_from_slice(&o.encode()),
            Msg::Quote(q) => out.extend_from_slice(&q.encode()),
        }
    }

    fn restore(input: &mut &[u8]) -> Option<Self> {
        let (msg, len) = match input.first()? {
            1 => (
                Msg::Order(Order::parse(input.get(..ORDER_LEN)?).ok()?),
                ORDER_LEN,
            ),
            2 => (
                Msg::Quote(Nbbo::parse(input.get(..NBBO_LEN)?).ok()?),
                NBBO_LEN,
            ),
            _ => return None,
        };
        *input = &input[len..];
        Some(msg)
    }
}

/// A symbol's state in a checkpoint: `reject`, `last_bid`, `last_offer`.
impl Persist for SymbolState {
    fn persist(&self, out: &mut Vec<u8>) {
        (self.reject, self.last_bid, self.last_offer).persist(out)
    }

    fn restore(input: &mut &[u8]) -> Option<Self> {
        let (reject, last_bid, last_offer) = <(bool, f64, f64)>::restore(input)?;
        Some(SymbolState {
            reject,
            last_bid,
            last_offer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market_spread::Side;

    #[test]
    fn messages_and_states_round_trip_through_checkpoints() {
        let o = Order {
            side: Side::Sell,
            account: 9,
            order_id: *b"abcdef",
            symbol: *b"AA  ",
            qty: 1.5,
            price: f64::NAN,
            transact_time: [b'1'; 21],
        };
        let q = Nbbo {
            symbol: *b"AA  ",
            transact_time: [b'2'; 21],
            bid: -1.0,
            offer: f64::INFINITY,
        };
        for m in [Msg::Order(o), Msg::Quote(q)] {
            let mut b = Vec::new();
            m.persist(&mut b);
            let mut input = &b[..];
            let back = Msg::restore(&mut input).unwrap();
            assert!(input.is_empty());
            let mut again = Vec::new();
            back.persist(&mut again);
            assert_eq!(b, again);
        }
        let s = SymbolState {
            reject: false,
            last_bid: 1.25,
            last_offer: 1.5,
        };
        let mut b = Vec::new();
        s.persist(&mut b);
        assert_eq!(SymbolState::restore(&mut &b[..]), Some(s));
        assert_eq!(Msg::restore(&mut &[3u8][..]), None);
    }
}
