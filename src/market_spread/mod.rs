//! Market Spread: Wallaroo's performance application, the data layer that Bettong serves it with.
//!
//! Market Spread merges two typed sources, orders and market quotes (NBBO), into one state per
//! stock symbol, and emits an order result for every order whose symbol's last quote was too wide
//! (see `market-spread.md` for the exact contract). Everything here is independent of the engine
//! pipeline, so the wire format, the rule, the generator, the sequential reference and the checker
//! of received results can be tested on their own and reused by the app, its tests and benches:
//!
//! - [`wire`]: the order and quote payloads, parsed and encoded byte for byte;
//! - [`state`]: the per-symbol state and the spread rule;
//! - [`result`]: the 55-byte order-result frame the app sends to its sink;
//! - [`gen`]: deterministic order and quote files (`bettong market-gen`);
//! - [`reference`]: which orders get a result when all quotes come first (the sequential answer);
//! - [`check`]: an incremental checker of received result streams;
//! - [`app`]: the app itself on the engine, and [`serve`]: `bettong market-spread`.

pub mod app;
pub mod bench;
pub mod check;
pub mod gen;
pub mod reference;
pub mod result;
pub mod serve;
pub mod state;
pub mod wire;

pub use result::{encode_result, OrderResult};
pub use state::SymbolState;
pub use wire::{Nbbo, Order, Side, WireError};
