//! Lower-case hexadecimal: ids, hashes and signed records in logs, keys and text formats.

use std::fmt;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two lower-case digits of `b`.
pub fn byte_digits(b: u8) -> [char; 2] {
    [
        char::from(DIGITS[usize::from(b >> 4)]),
        char::from(DIGITS[usize::from(b & 0x0f)]),
    ]
}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|&b| byte_digits(b)).collect()
}

/// Writes lower-case hex of `bytes` (for `Display` impls, without allocating).
pub fn write(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    bytes
        .iter()
        .flat_map(|&b| byte_digits(b))
        .try_for_each(|c| f.write_char(c))
}

/// The value of a hex digit of either case.
pub fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => lower_value(c),
    }
}

/// The value of a lower-case hex digit (`None` for upper case: canonical forms).
pub fn lower_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The bytes of `text`: hex of either case with an even length, nothing else (no sign, no
/// prefix, no spaces).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(value(pair[0])? << 4 | value(pair[1])?))
        .collect()
}

/// [`decode`] of exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_hex() {
        let bytes = [0, 0x0f, 0xab, 0xff];
        assert_eq!(encode(&bytes), "000fabff");
        let mut written = String::new();
        write(&mut written, &bytes).unwrap();
        assert_eq!(written, "000fabff");
        assert_eq!(decode("000fabff"), Some(bytes.to_vec()));
        assert_eq!(decode("000FABFF"), Some(bytes.to_vec()));
        assert_eq!(decode_array::<4>("000fABff"), Some(bytes));
        assert_eq!(decode_array::<3>("000fabff"), None);
        assert_eq!(decode(""), Some(Vec::new()));
        for bad in ["abc", "zz", "é1", "+1", " 01", "0x01"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        for c in 0..=u8::MAX {
            let lower = c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
            assert_eq!(lower_value(c).is_some(), lower, "{c}");
            assert_eq!(value(c).is_some(), c.is_ascii_hexdigit(), "{c}");
            if let Some(v) = value(c) {
                assert_eq!(byte_digits(v)[1], char::from(c.to_ascii_lowercase()));
            }
        }
    }
}
