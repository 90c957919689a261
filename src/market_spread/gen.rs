//! Deterministic Market Spread input: an orders file and a quotes (NBBO) file, framed.
//!
//! Wallaroo measured Market Spread on recorded order and quote files over 350 stock symbols.
//! Bettong's tests and benches need the same shape of input, reproducible from a seed and of any
//! size, without shipping data files: so this module makes both files (the `bettong market-gen`
//! command), with 1 to 4 letter symbols padded with spaces to 4 bytes like Wallaroo's, prices
//! between about 1 and 1000 in cents, and quote spreads chosen so that about half of the symbols
//! reject orders after their last quote. Every symbol is quoted once at the start of the quotes
//! file, so a sender that sends the quotes first leaves no symbol in its never-quoted state.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::market_spread::state::SymbolState;
use crate::market_spread::wire::{Nbbo, Order, Side};
use crate::synth::Rng;

/// Most symbols [`write_market`] makes (far fewer than the 475 254 possible 1 to 4 letter names,
/// so drawing distinct names at random stays fast).
pub const MAX_SYMBOLS: usize = 100_000;
/// Bytes gathered before each write to the output.
const WRITE_CHUNK: usize = 64 * 1024;
/// Chance, in percent, that a quote after the first one for a symbol has the other spread class
/// (wide instead of narrow or back), so that the last quote applied decides.
const FLIP_PERCENT: u64 = 10;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Distinct symbols (default 350, as in Wallaroo's runs).
    pub symbols: usize,
    /// Orders in the orders file.
    pub orders: u64,
    /// Quotes in the quotes file; at least `symbols`, since each symbol is quoted once first.
    pub quotes: u64,
    /// Seed of the generator: the same options give the same bytes.
    pub seed: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            symbols: 350,
            orders: 100_000,
            quotes: 100_000,
            seed: 1,
        }
    }
}

/// What [`write_market`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenSummary {
    /// Distinct symbols.
    pub symbols: usize,
    /// Orders written.
    pub orders: u64,
    /// Quotes written.
    pub quotes: u64,
    /// Bytes of the orders file (headers included).
    pub order_bytes: u64,
    /// Bytes of the quotes file (headers included).
    pub nbbo_bytes: u64,
    /// Symbols that reject orders once every quote is applied.
    pub rejecting_symbols: usize,
    /// Orders that get a result when every quote is applied before them (the reference answer).
    pub results: u64,
}

/// One symbol of the generated market.
struct Symbol {
    name: [u8; 4],
    /// Typical price, in cents.
    base_cents: u64,
    /// Whether its quotes are usually wide (rejecting).
    wide: bool,
    state: SymbolState,
}

/// `count` distinct symbols of 1 to 4 uppercase letters, padded with spaces to 4 bytes.
pub fn symbols(count: usize, rng: &mut Rng) -> Vec<[u8; 4]> {
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let len = match rng.below(100) {
            0..=4 => 1,
            5..=29 => 2,
            30..=69 => 3,
            _ => 4,
        };
        let mut name = [b' '; 4];
        for b in &mut name[..len] {
            *b = b'A' + rng.below(26) as u8;
        }
        if seen.insert(name) {
            out.push(name);
        }
    }
    out
}

/// A transaction time `YYYYMMDD-HH:MM:SS.mmm`, `ms` milliseconds after 09:30 on 18 Aug 2015.
fn transact_time(ms: u64) -> [u8; 21] {
    let t = (9 * 3600 + 30 * 60) * 1000 + ms;
    let (h, m, s, milli) = (
        (t / 3_600_000) % 24,
        (t / 60_000) % 60,
        (t / 1000) % 60,
        t % 1000,
    );
    let text = format!("20150818-{h:02}:{m:02}:{s:02}.{milli:03}");
    text.as_bytes().try_into().expect("the format is 21 bytes")
}

/// A 6-character order id: `n` in base 36 (digits, then uppercase letters), zero-padded; unique
/// for the first 36^6 (about 2.2 billion) orders.
fn order_id(mut n: u64) -> [u8; 6] {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = [b'0'; 6];
    for b in id.iter_mut().rev() {
        *b = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    id
}

/// A price within 1% of `base_cents`, in whole cents, at least 1.00.
fn near(base_cents: u64, rng: &mut Rng) -> u64 {
    let swing = (base_cents / 100).max(1);
    (base_cents + rng.below(2 * swing + 1))
        .saturating_sub(swing)
        .max(100)
}

/// Frames written into a chunk buffer and handed to the output in large writes.
struct Chunked<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    total: u64,
    what: &'static str,
}

impl Chunked<'_> {
    fn flush_if(&mut self, at_least: usize) -> Result<()> {
        if self.buf.len() >= at_least && !self.buf.is_empty() {
            self.out
                .write_all(&self.buf)
                .with_context(|| format!("market-gen: writing the {} failed", self.what))?;
            self.total += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Fails unless every symbol fits and can be quoted once.
fn check_options(opts: &GenOptions) -> Result<()> {
    if opts.symbols == 0 || opts.symbols > MAX_SYMBOLS {
        bail!(
            "market-gen: --symbols {} is out of range: it must be between 1 and {MAX_SYMBOLS}",
            opts.symbols
        );
    }
    if opts.quotes < opts.symbols as u64 {
        bail!(
            "market-gen: --quotes-count {} is less than --symbols {}: every symbol is quoted once \
             at the start of the quotes file",
            opts.quotes,
            opts.symbols
        );
    }
    Ok(())
}

/// Writes `opts.quotes` framed quotes to `nbbo`, then `opts.orders` framed orders to `orders`,
/// deterministically from `opts.seed`. The first `opts.symbols` quotes quote each symbol once, in
/// order. Fails if the options are out of range or a write fails.
pub fn write_market(
    opts: &GenOptions,
    orders: &mut dyn Write,
    nbbo: &mut dyn Write,
) -> Result<GenSummary> {
    check_options(opts)?;
    let mut rng = Rng::new(opts.seed);
    let mut market: Vec<Symbol> = symbols(opts.symbols, &mut rng)
        .into_iter()
        .map(|name| Symbol {
            name,
            // Log-uniform between 1.00 and 1000.00.
            base_cents: (100.0 * 1000f64.powf(rng.next_f64())).round() as u64,
            wide: rng.below(2) == 0,
            state: SymbolState::default(),
        })
        .collect();

    let mut q = Chunked {
        out: nbbo,
        buf: Vec::with_capacity(WRITE_CHUNK + 64),
        total: 0,
        what: "quotes",
    };
    for i in 0..opts.quotes {
        let first_pass = i < opts.symbols as u64;
        let s = if first_pass {
            &mut market[i as usize]
        } else {
            let k = rng.below(opts.symbols as u64) as usize;
            &mut market[k]
        };
        let wide = s.wide ^ (!first_pass && rng.below(100) < FLIP_PERCENT);
        let bid = near(s.base_cents, &mut rng);
        // Narrow: 1 to 4 cents over at least 1.00, under both limits. Wide: 5 cents to 1.00 over,
        // at or over the absolute limit (5 cents exactly may fall either side in doubles).
        let spread = if wide {
            5 + rng.below(96)
        } else {
            1 + rng.below(4)
        };
        let quote = Nbbo {
            symbol: s.name,
            transact_time: transact_time(i),
            bid: bid as f64 / 100.0,
            offer: (bid + spread) as f64 / 100.0,
        };
        s.state.apply_quote(&quote);
        quote.encode_frame(&mut q.buf);
        q.flush_if(WRITE_CHUNK)?;
    }
    q.flush_if(0)?;
    let nbbo_bytes = q.total;

    let mut o = Chunked {
        out: orders,
        buf: Vec::with_capacity(WRITE_CHUNK + 64),
        total: 0,
        what: "orders",
    };
    let mut results = 0u64;
    for i in 0..opts.orders {
        let s = &market[rng.below(opts.symbols as u64) as usize];
        let order = Order {
            side: if rng.below(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            },
            account: 1 + rng.below(99_999) as u32,
            order_id: order_id(i),
            symbol: s.name,
            qty: (100 * (1 + rng.below(100))) as f64,
            price: near(s.base_cents, &mut rng) as f64 / 100.0,
            transact_time: transact_time(i),
        };
        results += u64::from(s.state.check_order(&order));
        order.encode_frame(&mut o.buf);
        o.flush_if(WRITE_CHUNK)?;
    }
    o.flush_if(0)?;

    Ok(GenSummary {
        symbols: opts.symbols,
        orders: opts.orders,
        quotes: opts.quotes,
        order_bytes: o.total,
        nbbo_bytes,
        rejecting_symbols: market.iter().filter(|s| s.state.reject).count(),
        results,
    })
}

/// [`write_market`] into memory: returns the framed orders and the framed quotes.
pub fn generate(opts: &GenOptions) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut orders, mut nbbo) = (Vec::new(), Vec::new());
    write_market(opts, &mut orders, &mut nbbo)?;
    Ok((orders, nbbo))
}

/// [`write_market`] into the files `orders_path` and `nbbo_path` (created or truncated).
pub fn write_files(opts: &GenOptions, orders_path: &Path, nbbo_path: &Path) -> Result<GenSummary> {
    check_options(opts)?;
    let create = |p: &Path| {
        File::create(p)
            .map(BufWriter::new)
            .with_context(|| format!("market-gen: cannot create {}", p.display()))
    };
    let (mut orders, mut nbbo) = (create(orders_path)?, create(nbbo_path)?);
    let summary = write_market(opts, &mut orders, &mut nbbo)?;
    orders
        .flush()
        .with_context(|| format!("market-gen: cannot write {}", orders_path.display()))?;
    nbbo.flush()
        .with_context(|| format!("market-gen: cannot write {}", nbbo_path.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::split_frames;
    use crate::market_spread::reference::expected_results;

    fn small() -> GenOptions {
        GenOptions {
            symbols: 350,
            orders: 5_000,
            quotes: 2_000,
            seed: 7,
        }
    }

    #[test]
    fn files_are_valid_deterministic_and_match_the_reference() {
        let generated = generate(&small()).unwrap();
        assert_eq!(generated, generate(&small()).unwrap());
        let (orders, nbbo) = generated;
        let os = split_frames(&orders).unwrap();
        let qs = split_frames(&nbbo).unwrap();
        assert_eq!((os.len(), qs.len()), (5_000, 2_000));
        assert_eq!(orders.len(), 5_000 * 57);
        assert_eq!(nbbo.len(), 2_000 * 46);
        let orders_parsed: Vec<Order> = os.iter().map(|p| Order::parse(p).unwrap()).collect();
        let quotes: Vec<Nbbo> = qs.iter().map(|p| Nbbo::parse(p).unwrap()).collect();
        // 350 distinct, well-formed symbols, each quoted once first, in the same order.
        let names: HashSet<[u8; 4]> = quotes[..350].iter().map(|q| q.symbol).collect();
        assert_eq!(names.len(), 350);
        for n in &names {
            let letters = n.iter().take_while(|b| b.is_ascii_uppercase()).count();
            assert!(
                letters >= 1 && n[letters..].iter().all(|&b| b == b' '),
                "{n:?}"
            );
        }
        assert!(orders_parsed.iter().all(|o| names.contains(&o.symbol)));
        assert!(quotes
            .iter()
            .all(|q| (1.0..1100.0).contains(&q.bid) && q.offer > q.bid));
        // Order ids are unique.
        let ids: HashSet<[u8; 6]> = orders_parsed.iter().map(|o| o.order_id).collect();
        assert_eq!(ids.len(), 5_000);
        // The generator's own count agrees with the sequential reference.
        let summary = write_market(&small(), &mut Vec::new(), &mut Vec::new()).unwrap();
        let expected = expected_results(&qs, &os);
        assert_eq!(summary.results, expected.len() as u64);
        // About half of the symbols reject, and so about half the orders get a result.
        assert!(
            (120..=230).contains(&summary.rejecting_symbols),
            "{summary:?}"
        );
        assert!((1_500..=3_500).contains(&summary.results), "{summary:?}");
        assert_ne!(
            generate(&GenOptions { seed: 8, ..small() }).unwrap().0,
            orders
        );
    }

    #[test]
    fn field_formats() {
        assert_eq!(&transact_time(0), b"20150818-09:30:00.000");
        assert_eq!(&transact_time(3_723_004), b"20150818-10:32:03.004");
        assert_eq!(&order_id(0), b"000000");
        assert_eq!(&order_id(36 * 36 + 35), b"00010Z");
        assert_eq!(&order_id(36u64.pow(6) - 1), b"ZZZZZZ");
    }

    #[test]
    fn bad_options_are_refused() {
        let err = generate(&GenOptions {
            quotes: 10,
            ..small()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--quotes-count 10 is less than --symbols 350"),
            "{err}"
        );
        let err = generate(&GenOptions {
            symbols: 0,
            ..small()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--symbols 0 is out of range"), "{err}");
    }
}
