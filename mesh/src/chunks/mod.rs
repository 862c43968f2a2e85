//! The content-addressed chunk store: memory cut into fixed-size chunks named by their blake3
//! hash, all-zero chunks elided, chunks kept zstd-compressed (or raw when incompressible) in a
//! directory, every read verified.

pub mod batch;
pub mod bench_support;
pub mod bitmap;
pub mod chunking;
pub mod codec;
pub mod file_format;
pub mod id;
pub mod store;
pub mod zero;

pub use batch::{Batch, BatchOutcome};
pub use bitmap::Bitmap;
pub use chunking::{
    chunk_refs, chunk_refs_on, ChunkRef, ChunkSize, ChunkSizeError, MAX_CHUNK_SIZE,
};
pub use codec::{
    decode_chunk, encode_chunk, ChunkDecoder, ChunkEncoder, CodecError, EncodedChunk, Level,
};
pub use file_format::FormatError;
pub use id::{ChunkId, ParseChunkIdError, CHUNK_ID_LEN};
pub use store::{ChunkStore, Put, StoreError, StoreStats};
pub use zero::is_zero;
