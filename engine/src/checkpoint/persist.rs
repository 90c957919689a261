//! [`Persist`]: how a key's state is written into a checkpoint and read back.
//!
//! The engine is generic over the state a pipeline keeps per key, so it cannot serialise it by
//! itself. A state type that implements `Persist` can be checkpointed; the bound is asked only
//! by [`Engine::start_with_checkpoints`](crate::Engine::start_with_checkpoints), so pipelines
//! that never checkpoint need nothing. It is implemented for the integers, floats, `bool`,
//! `char`, `()`, strings, and `Option`, `Vec`, pairs and triples of such types.
//!
//! The encoding is compact (integers are LEB128 varints, signed ones zig-zagged) and
//! self-delimiting, so composite types just concatenate their parts. It is not meant to be read
//! by anything but [`Persist::restore`] of the same type.

/// A state type that can be written into a checkpoint and read back.
///
/// ```
/// use bettong_engine::Persist;
/// let mut bytes = Vec::new();
/// (42u64, Some(String::from("x"))).persist(&mut bytes);
/// let mut input = &bytes[..];
/// let back = <(u64, Option<String>)>::restore(&mut input);
/// assert_eq!(back, Some((42, Some("x".to_string()))));
/// assert!(input.is_empty());
/// ```
pub trait Persist: Sized {
    /// Appends this value's encoding to `out`.
    fn persist(&self, out: &mut Vec<u8>);

    /// Reads one value from the front of `input`, advancing it past the bytes used. Returns
    /// `None` when the bytes are not a value of this type (a damaged or foreign checkpoint).
    fn restore(input: &mut &[u8]) -> Option<Self>;
}

/// Appends `v` as an LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an LEB128 varint of at most 10 bytes.
pub(crate) fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in input.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(v);
        }
    }
    None
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Persist for $t {
            #[inline]
            fn persist(&self, out: &mut Vec<u8>) {
                put_varint(out, *self as u64);
            }
            #[inline]
            fn restore(input: &mut &[u8]) -> Option<Self> {
                <$t>::try_from(get_varint(input)?).ok()
            }
        }
    )*};
}
unsigned!(u16, u32, u64, usize);

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl Persist for $t {
            #[inline]
            fn persist(&self, out: &mut Vec<u8>) {
                let v = *self as i64;
                put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
            }
            #[inline]
            fn restore(input: &mut &[u8]) -> Option<Self> {
                let z = get_varint(input)?;
                let v = ((z >> 1) as i64) ^ -((z & 1) as i64);
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
signed!(i16, i32, i64, isize);

macro_rules! fixed {
    ($($t:ty),*) => {$(
        impl Persist for $t {
            #[inline]
            fn persist(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn restore(input: &mut &[u8]) -> Option<Self> {
                let b = take(input, std::mem::size_of::<$t>())?;
                Some(<$t>::from_le_bytes(b.try_into().ok()?))
            }
        }
    )*};
}
fixed!(u8, i8, u128, i128, f32, f64);

impl Persist for bool {
    fn persist(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        match take(input, 1)?[0] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl Persist for char {
    fn persist(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(*self));
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        char::from_u32(u32::try_from(get_varint(input)?).ok()?)
    }
}

impl Persist for () {
    fn persist(&self, _out: &mut Vec<u8>) {}
    fn restore(_input: &mut &[u8]) -> Option<Self> {
        Some(())
    }
}

impl Persist for String {
    fn persist(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        let n = usize::try_from(get_varint(input)?).ok()?;
        let bytes = take(input, n)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
}

impl Persist for Box<str> {
    fn persist(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        String::restore(input).map(String::into_boxed_str)
    }
}

impl<T: Persist> Persist for Option<T> {
    fn persist(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.persist(out);
            }
        }
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        match take(input, 1)?[0] {
            0 => Some(None),
            1 => T::restore(input).map(Some),
            _ => None,
        }
    }
}

impl<T: Persist> Persist for Vec<T> {
    fn persist(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for v in self {
            v.persist(out);
        }
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        let n = usize::try_from(get_varint(input)?).ok()?;
        // Each element takes at least one byte except zero-sized ones; never trust `n` for the
        // allocation size beyond what the input could hold.
        let mut v = Vec::with_capacity(n.min(input.len()));
        for _ in 0..n {
            v.push(T::restore(input)?);
        }
        Some(v)
    }
}

impl<A: Persist, B: Persist> Persist for (A, B) {
    fn persist(&self, out: &mut Vec<u8>) {
        self.0.persist(out);
        self.1.persist(out);
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        Some((A::restore(input)?, B::restore(input)?))
    }
}

impl<A: Persist, B: Persist, C: Persist> Persist for (A, B, C) {
    fn persist(&self, out: &mut Vec<u8>) {
        self.0.persist(out);
        self.1.persist(out);
        self.2.persist(out);
    }
    fn restore(input: &mut &[u8]) -> Option<Self> {
        Some((A::restore(input)?, B::restore(input)?, C::restore(input)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Persist + PartialEq + std::fmt::Debug>(v: T) {
        let mut out = Vec::new();
        v.persist(&mut out);
        let mut input = &out[..];
        assert_eq!(T::restore(&mut input).as_ref(), Some(&v));
        assert!(input.is_empty(), "{v:?} left {} bytes", input.len());
    }

    #[test]
    fn values_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            round_trip(v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            round_trip(v);
        }
        round_trip(u32::MAX);
        round_trip(-5i16);
        round_trip(3.5f64);
        round_trip(f32::NEG_INFINITY);
        round_trip(u128::MAX);
        round_trip(true);
        round_trip('ß');
        round_trip(());
        round_trip(String::from("naïve"));
        round_trip(Some(vec![1u8, 2, 3]));
        round_trip(None::<u64>);
        round_trip((1u64, -2i32, String::new()));
    }

    #[test]
    fn bad_bytes_are_refused_not_panicked_on() {
        assert_eq!(u64::restore(&mut &[0x80u8][..]), None, "varint cut short");
        assert_eq!(
            u64::restore(&mut &[0xffu8; 11][..]),
            None,
            "varint too long"
        );
        assert_eq!(u8::try_from(300u64).ok(), None);
        assert_eq!(
            u16::restore(&mut &[0xff, 0xff, 0x7f][..]),
            None,
            "out of range"
        );
        assert_eq!(bool::restore(&mut &[2u8][..]), None);
        assert_eq!(
            String::restore(&mut &[5u8, b'a'][..]),
            None,
            "string cut short"
        );
        assert_eq!(String::restore(&mut &[1u8, 0xff][..]), None, "not UTF-8");
        assert_eq!(
            Vec::<u64>::restore(&mut &[0xff, 0xff, 0xff, 0x0f][..]),
            None
        );
        assert_eq!(Option::<u8>::restore(&mut &[7u8][..]), None);
        assert_eq!(
            char::restore(&mut &[0x80, 0x80, 0x44][..]),
            None,
            "surrogate/too big"
        );
    }
}
