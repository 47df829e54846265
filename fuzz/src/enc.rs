//! Structure-aware inputs: every operation type is declared once with [`ops!`], which derives
//! `arbitrary::Arbitrary` (how libFuzzer's bytes become operations) and an [`Encode`] that
//! writes the bytes `Arbitrary` reads back as the same value. The seed generator
//! (`src/bin/seeds.rs`) builds operation sequences in Rust and encodes them with it, and checks
//! that each decodes to what it encoded.
//!
//! The byte format is `arbitrary` 1.x's: integers little-endian, `bool` one byte (bit 0), an
//! enum a `u32` `v` choosing variant `(v * count) >> 32` followed by the variant's fields in
//! order, arrays element by element.

/// Writes the bytes `arbitrary` decodes as `self`.
pub trait Encode {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
encode_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for x in self {
            x.encode(out);
        }
    }
}

/// The `u32` that makes `arbitrary`'s derived enum pick variant `index` of `count`.
pub fn variant_tag(index: usize, count: usize, out: &mut Vec<u8>) {
    let (i, n) = (index as u64, count as u64);
    let v = (i << 32).div_ceil(n);
    assert!(
        v <= u64::from(u32::MAX) && (v * n) >> 32 == i,
        "variant {index} of {count}"
    );
    (v as u32).encode(out);
}

/// Declares an enum whose variants are units or have named fields, deriving `Arbitrary`,
/// `Debug`, `Clone`, `PartialEq` and [`Encode`].
macro_rules! ops {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $( $(#[$vm:meta])* $var:ident $( { $( $(#[$fm:meta])* $f:ident : $t:ty ),* $(,)? } )? ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(arbitrary::Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vm])* $var $( { $( $(#[$fm])* $f : $t ),* } )? ),*
        }

        impl $crate::enc::Encode for $name {
            #[allow(unused_variables)]
            fn encode(&self, out: &mut Vec<u8>) {
                const NAMES: &[&str] = &[$( stringify!($var) ),*];
                let (name, fields): (&str, &dyn Fn(&mut Vec<u8>)) = match self {
                    $( $name::$var $( { $( $f ),* } )? => (
                        stringify!($var),
                        &move |out: &mut Vec<u8>| { $( $( $crate::enc::Encode::encode($f, out); )* )? },
                    ), )*
                };
                let index = NAMES.iter().position(|n| *n == name).unwrap_or(0);
                $crate::enc::variant_tag(index, NAMES.len(), out);
                fields(out);
            }
        }
    };
}
pub(crate) use ops;

/// Encodes a sequence of values.
pub fn encode_all<T: Encode>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in items {
        x.encode(&mut out);
    }
    out
}
