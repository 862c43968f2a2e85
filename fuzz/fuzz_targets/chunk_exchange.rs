#![no_main]
//! The decoders of `/novacron/chunks/1` (novacron_mesh::transfer): requests, responses,
//! chunk set manifests and the frame splitter. The first byte picks the decoder, the rest
//! is its input.
//!
//! Invariants: nothing panics; whatever decodes is within the protocol's limits and
//! re-encodes to exactly the bytes it came from (one encoding per message); a decoded
//! manifest passes its own checks, decodes again for its id, and never lists a chunk
//! outside the set; a chunk frame that decodes against its id hashes to it; the splitter
//! never yields a body over its limit.

use novacron_mesh::chunks::{decode_chunk, ChunkId, MAX_CHUNK_SIZE};
use novacron_mesh::transfer::manifest::{
    manifest_id, ChunkSetManifest, MAX_MANIFEST_BYTES, MAX_MANIFEST_CHUNKS, MAX_NAME_BYTES,
};
use novacron_mesh::transfer::wire::{
    FrameSplitter, Request, Response, MAX_IDS_PER_REQUEST, MAX_REQUEST_BODY, MAX_RESPONSE_BODY,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => request(input),
        1 => response(input),
        2 => manifest(input),
        _ => splitter(input),
    }
});

/// The body of an encoded frame (the 4-byte length header checked and removed).
fn body(frame: &[u8]) -> &[u8] {
    let (header, body) = frame.split_at(4);
    assert_eq!(
        u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize,
        body.len()
    );
    body
}

fn request(input: &[u8]) {
    let Ok(r) = Request::decode(input) else {
        return;
    };
    assert!(input.len() <= MAX_REQUEST_BODY);
    if let Request::Chunks(ids) = &r {
        assert!(!ids.is_empty() && ids.len() <= MAX_IDS_PER_REQUEST);
        for (i, id) in ids.iter().enumerate() {
            assert!(!ids[..i].contains(id), "duplicate id accepted");
        }
    }
    assert_eq!(body(&r.encode()), input, "a request with a second encoding");
}

fn response(input: &[u8]) {
    let Ok(r) = Response::decode(input) else {
        return;
    };
    assert!(input.len() <= MAX_RESPONSE_BODY);
    assert_eq!(
        body(&r.encode()),
        input,
        "a response with a second encoding"
    );
    if let Response::Chunk {
        id,
        encoded,
        raw_len,
    } = &r
    {
        assert!(*raw_len >= 1 && *raw_len as usize <= MAX_CHUNK_SIZE);
        // Verifying against the id the frame names: bounded, and only the right bytes.
        if let Ok(raw) = decode_chunk(encoded, id, *raw_len as usize) {
            assert_eq!(raw.len(), *raw_len as usize);
            assert_eq!(ChunkId::of(&raw), *id);
        }
    }
}

fn manifest(input: &[u8]) {
    let Ok(m) = ChunkSetManifest::decode(input) else {
        return;
    };
    assert!(input.len() <= MAX_MANIFEST_BYTES);
    assert!(m.name().len() <= MAX_NAME_BYTES);
    assert!(m.chunks().len() <= MAX_MANIFEST_CHUNKS);
    assert!(m.check().is_ok(), "a decoded manifest fails its checks");
    let count = m.chunk_count();
    let mut last = None;
    for c in m.chunks() {
        assert!(u64::from(c.index) < count, "chunk past the end");
        assert!(last < Some(c.index), "chunks out of order");
        last = Some(c.index);
        assert!(c.len >= 1 && c.len <= m.chunk_size());
    }
    let again = ChunkSetManifest::decode_for(&manifest_id(input), input)
        .unwrap_or_else(|e| panic!("decodes, but not for its own id: {e}"));
    assert_eq!(again, m);
    let encoded = m
        .encode()
        .unwrap_or_else(|e| panic!("a decoded manifest does not encode: {e}"));
    let back = ChunkSetManifest::decode(&encoded)
        .unwrap_or_else(|e| panic!("a re-encoded manifest does not decode: {e}"));
    assert_eq!(back, m);
}

fn splitter(input: &[u8]) {
    // The first byte picks the piece size, so frames are cut at every boundary.
    let Some((&step, stream)) = input.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut s = FrameSplitter::new(MAX_REQUEST_BODY);
    for piece in stream.chunks(step) {
        s.push(piece);
        loop {
            match s.next_body() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= MAX_REQUEST_BODY);
                    let _ = Request::decode(&body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
