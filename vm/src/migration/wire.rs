//! Frames over a byte stream: [`FrameReader`] buffers a socket's bytes and hands out whole,
//! validated [`Message`]s; [`write_message`] sends one. Both count the bytes they move so
//! a driver can report what went over the wire.

use std::io::{self, Read, Write};

use super::messages::{decode_frame, encode_frame, FrameError, Message, FRAME_HEADER_LEN};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the connection ended inside a frame ({0} bytes of it were read)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Smallest read buffer; a frame larger than this grows the buffer to fit, up to the
/// frame limit that [`decode_frame`] enforces from the length prefix.
const READ_CHUNK: usize = 256 << 10;

pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    bytes_read: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            bytes_read: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next message. A length prefix over the limit or an invalid archive is an error as
    /// soon as it is seen; the stream is then unusable (the caller drops the link).
    pub fn read_message(&mut self) -> Result<Message, WireError> {
        loop {
            if let Some((msg, used)) = decode_frame(&self.buf[self.start..self.end])? {
                self.start += used;
                return Ok(msg);
            }
            self.make_room();
            let n = match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                let pending = self.end - self.start;
                return Err(if pending == 0 {
                    WireError::Closed
                } else {
                    WireError::Truncated(pending)
                });
            }
            self.end += n;
            self.bytes_read += n as u64;
        }
    }

    /// Moves unread bytes to the front and grows the buffer to hold the frame in progress.
    fn make_room(&mut self) {
        let pending = self.end - self.start;
        let need = match self.buf.get(self.start..self.start + FRAME_HEADER_LEN) {
            Some(prefix) if pending >= FRAME_HEADER_LEN => {
                let mut len = [0u8; FRAME_HEADER_LEN];
                len.copy_from_slice(prefix);
                // decode_frame already refused lengths over the limit.
                FRAME_HEADER_LEN + u32::from_le_bytes(len) as usize
            }
            _ => FRAME_HEADER_LEN,
        };
        if self.start > 0 && (self.end == self.buf.len() || self.buf.len() - self.start < need) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        let want = need.max(READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() + READ_CHUNK, 0);
        }
    }
}

/// Writes one message as a frame; returns the bytes written.
pub fn write_message(w: &mut impl Write, msg: &Message) -> Result<usize, WireError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    Ok(frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Hands out at most `step` bytes per read, to cut frames at every boundary.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::Ready,
            Message::Chunk {
                index: 3,
                id: [1; 32],
                raw: true,
                bytes: vec![9; 700_000],
            },
            Message::Abort { reason: "x".into() },
        ]
    }

    #[test]
    fn frames_survive_any_read_boundaries() {
        let mut data = Vec::new();
        for m in messages() {
            write_message(&mut data, &m).unwrap();
        }
        for step in [1, 3, 4, 5, 4096, 1 << 20] {
            let mut r = FrameReader::new(Trickle {
                data: data.clone(),
                pos: 0,
                step,
            });
            for m in messages() {
                assert_eq!(r.read_message().unwrap(), m, "step {step}");
            }
            assert!(matches!(r.read_message(), Err(WireError::Closed)));
            assert_eq!(r.bytes_read(), data.len() as u64);
        }
    }

    #[test]
    fn a_cut_frame_and_an_oversized_prefix_are_errors() {
        let mut data = Vec::new();
        write_message(&mut data, &messages()[1]).unwrap();
        data.truncate(data.len() - 1);
        let mut r = FrameReader::new(Cursor::new(data));
        assert!(matches!(r.read_message(), Err(WireError::Truncated(_))));
        let mut r = FrameReader::new(Cursor::new(u32::MAX.to_le_bytes().to_vec()));
        let err = r.read_message().unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }
}
