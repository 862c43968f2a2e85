//! Framing of cell messages on a stream: `u32 LE length || body`.

use super::{decode_body, CellWireError, Envelope, MAX_BODY_BYTES};

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The body length a frame header announces, refused when over [`MAX_BODY_BYTES`] or zero.
pub fn body_len(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, CellWireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_BODY_BYTES {
        return Err(CellWireError::BodyTooLarge {
            len,
            max: MAX_BODY_BYTES,
        });
    }
    if len == 0 {
        return Err(CellWireError::Truncated { what: "header" });
    }
    Ok(len)
}

/// Frames a body: `u32 LE length || body`.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, CellWireError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CellWireError::BodyTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes one whole frame (header and body, nothing after it).
pub fn decode_frame(frame: &[u8]) -> Result<Envelope, CellWireError> {
    let header: [u8; FRAME_HEADER_BYTES] = frame
        .get(..FRAME_HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(CellWireError::ShortHeader { len: frame.len() })?;
    let declared = body_len(header)?;
    let body = &frame[FRAME_HEADER_BYTES..];
    if body.len() != declared {
        return Err(CellWireError::LengthMismatch {
            len: body.len(),
            declared,
        });
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_wire::encode_body;
    use crate::cell_wire::fixtures::*;

    #[test]
    fn envelopes_round_trip_through_frames() {
        for env in samples() {
            let frame = encode_frame(&encode_body(&env)).unwrap();
            assert_eq!(decode_frame(&frame), Ok(env.clone()));
        }
    }

    #[test]
    fn every_framing_error_is_named() {
        assert_eq!(
            decode_frame(&[1, 0]),
            Err(CellWireError::ShortHeader { len: 2 })
        );
        assert_eq!(
            body_len(70_000u32.to_le_bytes()),
            Err(CellWireError::BodyTooLarge {
                len: 70_000,
                max: MAX_BODY_BYTES
            })
        );
        assert_eq!(
            body_len(u32::MAX.to_le_bytes()),
            Err(CellWireError::BodyTooLarge {
                len: u32::MAX as usize,
                max: MAX_BODY_BYTES
            })
        );
        assert_eq!(
            body_len([0; 4]),
            Err(CellWireError::Truncated { what: "header" })
        );
        let mut frame = encode_frame(&ack_body()).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame),
            Err(CellWireError::LengthMismatch { .. })
        ));
        assert!(encode_frame(&vec![0; MAX_BODY_BYTES + 1]).is_err());
        assert!(matches!(
            decode_body(&vec![0; MAX_BODY_BYTES + 1]),
            Err(CellWireError::BodyTooLarge { .. })
        ));
    }
}
