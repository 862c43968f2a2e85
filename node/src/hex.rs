//! Lower-case hex, for ids and signed records in the CLI, the API and chitchat values.

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text`, or None if it is not hex (of either case) with an even length.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take a sign ("+1").
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_hex() {
        assert_eq!(
            from_hex(&to_hex(&[0, 0xab, 0xff])),
            Some(vec![0, 0xab, 0xff])
        );
        for bad in ["abc", "zz", "é1", "+1"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }
}
