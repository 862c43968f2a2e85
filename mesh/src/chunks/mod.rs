//! The content-addressed chunk store: memory cut into fixed-size chunks named by their blake3
//! hash, all-zero chunks elided, chunks kept zstd-compressed (or raw when incompressible) in a
//! directory, every read verified.

pub mod chunking;
pub mod codec;
pub mod id;
pub mod zero;

pub use chunking::{
    chunk_refs, chunk_refs_on, ChunkRef, ChunkSize, ChunkSizeError, MAX_CHUNK_SIZE,
};
pub use codec::{
    decode_chunk, encode_chunk, ChunkDecoder, ChunkEncoder, CodecError, EncodedChunk, Level,
};
pub use id::{ChunkId, ParseChunkIdError, CHUNK_ID_LEN};
pub use zero::is_zero;
