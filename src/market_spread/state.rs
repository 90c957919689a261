//! The per-symbol state of Market Spread and its spread rule.
//!
//! Market Spread's whole computation is this rule: a quote decides whether the symbol's spread is
//! too wide, and an order on a too-wide symbol produces a result. The contract fixes the rule to
//! the bit (plain IEEE-754 doubles, `diff >= 0.05 || diff / mid >= 0.05`, not a multiplied or
//! integer-cents form, which differ on the edges), so it lives in one place that the app, the
//! sequential reference and the tests all call.

use crate::market_spread::wire::{Nbbo, Order};

/// The spread, absolute or relative to the mid price, at or above which a symbol rejects orders.
pub const MAX_SPREAD: f64 = 0.05;

/// What Market Spread keeps for one symbol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SymbolState {
    /// Whether orders on this symbol produce a result. True until the first quote.
    pub reject: bool,
    /// Bid of the last quote applied (0.0 before any).
    pub last_bid: f64,
    /// Offer of the last quote applied (0.0 before any).
    pub last_offer: f64,
}

impl Default for SymbolState {
    /// A symbol never quoted: it rejects every order, with bid and offer 0.0.
    fn default() -> Self {
        SymbolState {
            reject: true,
            last_bid: 0.0,
            last_offer: 0.0,
        }
    }
}

impl SymbolState {
    /// Applies a quote for this symbol: computes `diff = offer - bid`, `mid = (bid + offer) / 2`,
    /// `reject = diff >= 0.05 || diff / mid >= 0.05` in doubles (a NaN comparison is false), and
    /// stores the bid and offer. The quote's symbol is not checked: the caller keyed the state.
    pub fn apply_quote(&mut self, quote: &Nbbo) {
        let diff = quote.offer - quote.bid;
        let mid = (quote.bid + quote.offer) / 2.0;
        self.reject = diff >= MAX_SPREAD || diff / mid >= MAX_SPREAD;
        self.last_bid = quote.bid;
        self.last_offer = quote.offer;
    }

    /// Whether `order` produces an order result (true when this symbol rejects orders).
    pub fn check_order(&self, _order: &Order) -> bool {
        self.reject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market_spread::wire::tests::{nbbo, order};

    /// Whether an order gets a result after one quote `bid`/`offer`.
    fn rejects(bid: f64, offer: f64) -> bool {
        let mut s = SymbolState::default();
        s.apply_quote(&nbbo(b"AA  ", bid, offer));
        assert_eq!(s.last_bid.to_bits(), bid.to_bits());
        assert_eq!(s.last_offer.to_bits(), offer.to_bits());
        s.check_order(&order(b"AA  ", b"000001"))
    }

    #[test]
    fn never_quoted_symbol_rejects() {
        let s = SymbolState::default();
        assert_eq!(
            s,
            SymbolState {
                reject: true,
                last_bid: 0.0,
                last_offer: 0.0
            }
        );
        assert!(s.check_order(&order(b"ZZZZ", b"000001")));
    }

    #[test]
    fn absolute_spread_edges_in_doubles() {
        // 1.05 - 1.00 = 0.050000000000000044 >= 0.05: rejected (relative 0.0488 alone would not).
        assert!(rejects(1.0, 1.05));
        assert!(rejects(10.0, 10.05));
        // 100.05 - 100.00 = 0.04999999999999716: accepted, though it is 5 cents (an integer-cents
        // rule would reject it).
        assert!(!rejects(100.0, 100.05));
        assert!(!rejects(1000.0, 1000.05));
        assert!(!rejects(3.10, 3.15));
        // Exactly 0.05 in real numbers, 0.04999999999999993 in doubles, mid 1.0: accepted.
        assert!(!rejects(0.975, 1.025));
        assert!(!rejects(100.0, 100.04));
        assert!(rejects(100.0, 100.06));
        assert!(!rejects(5.0, 5.0));
    }

    #[test]
    fn relative_spread_edges_in_doubles() {
        // 0.02 / 0.4 is 5% in real numbers, but 0.019999999999999962 / 0.4 =
        // 0.049999999999999906 in doubles: accepted (2 cents of 40 cents would reject).
        assert!(!rejects(0.39, 0.41));
        // 0.020000000000000018 / 0.39 = 0.0513: rejected on the relative spread alone.
        assert!(rejects(0.38, 0.40));
        assert!(rejects(0.29, 0.31));
        assert!(rejects(0.19, 0.21));
        assert!(!rejects(0.59, 0.62));
        assert!(!rejects(0.79, 0.83));
        // Tiny prices: 0.001 absolute, 67% relative.
        assert!(rejects(0.001, 0.002));
    }

    #[test]
    fn divided_and_multiplied_forms_differ_on_negative_mids() {
        // diff 0.01, mid -0.995: diff / mid = -0.01 < 0.05, accepted, whereas the multiplied form
        // `diff >= 0.05 * mid` (0.01 >= -0.04975) would reject.
        let (bid, offer) = (-1.0f64, -0.99f64);
        assert!(offer - bid >= 0.05 * ((bid + offer) / 2.0));
        assert!(!rejects(bid, offer));
        // Crossed and negative: diff -0.1, mid -0.95, diff / mid = 0.105: rejected, whereas the
        // multiplied form (-0.1 >= -0.0475) would accept.
        let (bid, offer) = (-0.9f64, -1.0f64);
        assert!(offer - bid < 0.05 * ((bid + offer) / 2.0));
        assert!(rejects(bid, offer));
    }

    #[test]
    fn crossed_quotes() {
        // bid above offer with a positive mid: diff and diff / mid are negative, accepted.
        assert!(!rejects(0.9, 0.85));
        assert!(!rejects(101.0, 100.0));
    }

    #[test]
    fn zero_and_non_finite_prices() {
        // bid = -offer: mid 0, diff / mid = +inf when diff > 0, -inf when diff < 0.
        assert!(rejects(-0.01, 0.01));
        assert!(!rejects(0.01, -0.01));
        // 0 / 0 = NaN: every comparison false, accepted.
        assert!(!rejects(0.0, 0.0));
        assert!(!rejects(-0.0, 0.0));
        // NaN anywhere makes diff NaN: accepted.
        assert!(!rejects(f64::NAN, f64::NAN));
        assert!(!rejects(f64::NAN, 1.0));
        assert!(!rejects(1.0, f64::NAN));
        // inf - inf = NaN: accepted; finite to infinite offer: diff inf, rejected.
        assert!(!rejects(f64::INFINITY, f64::INFINITY));
        assert!(rejects(1.0, f64::INFINITY));
        assert!(!rejects(f64::INFINITY, 1.0));
        // -inf bid: diff +inf: rejected.
        assert!(rejects(f64::NEG_INFINITY, 1.0));
    }

    #[test]
    fn the_last_quote_applied_is_the_state() {
        let mut s = SymbolState::default();
        s.apply_quote(&nbbo(b"AA  ", 10.0, 10.01));
        assert!(!s.reject);
        s.apply_quote(&nbbo(b"AA  ", 10.0, 11.0));
        assert!(s.reject);
        assert_eq!((s.last_bid, s.last_offer), (10.0, 11.0));
        s.apply_quote(&nbbo(b"AA  ", 20.0, 20.02));
        assert!(!s.check_order(&order(b"AA  ", b"000002")));
        assert_eq!((s.last_bid, s.last_offer), (20.0, 20.02));
    }
}
