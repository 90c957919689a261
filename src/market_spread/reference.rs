//! The sequential reference answer of Market Spread: which orders get a result when every quote
//! is applied before any order.
//!
//! The served app is concurrent (many cores, many connections), so its tests need an answer
//! computed independently of it, in the simplest possible way: one map of symbol states, all
//! quotes in file order, then all orders in file order. Frames the contract rejects (wrong length,
//! type or side) are skipped here exactly as the app skips them.

use std::collections::HashMap;

use crate::market_spread::state::SymbolState;
use crate::market_spread::wire::{Nbbo, Order};

/// The state of every quoted symbol after applying the valid quotes of `nbbo_payloads` in order.
pub fn final_states(nbbo_payloads: &[&[u8]]) -> HashMap<[u8; 4], SymbolState> {
    let mut states: HashMap<[u8; 4], SymbolState> = HashMap::new();
    for q in nbbo_payloads.iter().filter_map(|p| Nbbo::parse(p).ok()) {
        states.entry(q.symbol).or_default().apply_quote(&q);
    }
    states
}

/// The `(symbol, order id)` of every order that produces a result when all quotes of
/// `nbbo_payloads` are applied, in order, before the orders of `order_payloads`; in the orders'
/// order. Invalid payloads are skipped. A symbol never quoted rejects, so its orders are listed.
pub fn expected_results(
    nbbo_payloads: &[&[u8]],
    order_payloads: &[&[u8]],
) -> Vec<([u8; 4], [u8; 6])> {
    let states = final_states(nbbo_payloads);
    order_payloads
        .iter()
        .filter_map(|p| Order::parse(p).ok())
        .filter(|o| {
            states
                .get(&o.symbol)
                .copied()
                .unwrap_or_default()
                .check_order(o)
        })
        .map(|o| (o.symbol, o.order_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market_spread::wire::tests::{nbbo, order};

    #[test]
    fn last_quote_wins_and_unquoted_symbols_reject() {
        let quotes = [
            nbbo(b"AA  ", 10.0, 10.01).encode(), // AA accepts...
            nbbo(b"BB  ", 10.0, 12.0).encode(),  // BB rejects...
            nbbo(b"AA  ", 10.0, 11.0).encode(),  // ...then AA rejects
            nbbo(b"BB  ", 10.0, 10.02).encode(), // ...then BB accepts
            nbbo(b"CC  ", 5.0, 5.01).encode(),
        ];
        let mut bad_quote = nbbo(b"CC  ", 5.0, 9.0).encode();
        bad_quote[0] = 1; // wrong type: skipped, CC keeps accepting
        let orders = [
            order(b"AA  ", b"000001").encode(),
            order(b"BB  ", b"000002").encode(),
            order(b"CC  ", b"000003").encode(),
            order(b"DD  ", b"000004").encode(),
            order(b"AA  ", b"000005").encode(),
        ];
        let mut bad_order = order(b"DD  ", b"000006").encode();
        bad_order[1] = 7; // bad side: skipped
        let mut qs: Vec<&[u8]> = quotes.iter().map(|q| &q[..]).collect();
        qs.push(&bad_quote);
        qs.push(b"short");
        let mut os: Vec<&[u8]> = orders.iter().map(|o| &o[..]).collect();
        os.push(&bad_order);
        os.push(&[]);
        assert_eq!(
            expected_results(&qs, &os),
            vec![
                (*b"AA  ", *b"000001"),
                (*b"DD  ", *b"000004"),
                (*b"AA  ", *b"000005")
            ]
        );
        let states = final_states(&qs);
        assert_eq!(states.len(), 3);
        assert_eq!(states[b"BB  "].last_offer, 10.02);
    }
}
