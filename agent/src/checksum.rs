//! Checksums over the bytes served: parsing `ALGO:HEX`, and a hasher that
//! runs on its own thread so hashing never slows the disk writer. The
//! digests themselves are OpenSSL's ([`libcrypto`] says why).

mod libcrypto;

use std::thread;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{DeployError, Result};

pub use byoi_wire::spec::{Algorithm, Checksum};

/// Compares a computed digest with the expected one.
pub fn verify(expected: &Checksum, actual: &[u8]) -> Result<()> {
    let actual = to_hex(actual);
    if actual == expected.hex {
        Ok(())
    } else {
        Err(DeployError::ChecksumMismatch { algo: expected.algo.name(), actual, expected: expected.hex.clone() })
    }
}

/// Lowercase hexadecimal.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub use libcrypto::Hasher;

/// How many chunks may wait for the hashing thread before the download
/// waits for it: enough to ride out scheduling jitter, small enough to bound
/// memory (chunks are at most a few hundred KiB).
const HASH_QUEUE_CHUNKS: usize = 16;

/// A hasher on its own thread, fed with reference-counted chunks.
#[derive(Debug)]
pub struct HashThread {
    tx: mpsc::Sender<Bytes>,
    handle: thread::JoinHandle<Vec<u8>>,
}

impl HashThread {
    /// Starts hashing with `algo`.
    pub fn spawn(algo: Algorithm) -> Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(HASH_QUEUE_CHUNKS);
        let handle = thread::Builder::new()
            .name("byoi-hash".into())
            .spawn(move || {
                let mut hasher = Hasher::new(algo);
                while let Some(chunk) = rx.blocking_recv() {
                    hasher.update(&chunk);
                }
                hasher.finish()
            })
            .map_err(|e| DeployError::Internal(format!("spawning the hashing thread: {e}")))?;
        Ok(HashThread { tx, handle })
    }

    /// A handle to feed chunks with, in stream order.
    pub fn feeder(&self) -> HashFeeder {
        HashFeeder { tx: self.tx.clone() }
    }

    /// Closes the feed and waits for the digest.
    pub fn finish(self) -> Result<Vec<u8>> {
        drop(self.tx);
        self.handle.join().map_err(|_| DeployError::Internal("the hashing thread panicked".into()))
    }
}

/// The sending side of a [`HashThread`].
#[derive(Debug, Clone)]
pub struct HashFeeder {
    tx: mpsc::Sender<Bytes>,
}

// The receiver only goes away if the hashing thread died; `HashThread::finish`
// reports that, so a failed send needs no handling here.
impl HashFeeder {
    /// Queues a chunk; waits while the hasher is behind.
    pub async fn feed(&self, chunk: Bytes) {
        let _ = self.tx.send(chunk).await;
    }

    /// Queues a chunk from a plain thread; blocks while the hasher is behind.
    pub fn feed_blocking(&self, chunk: Bytes) {
        let _ = self.tx.blocking_send(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_algo_and_hex() {
        let c: Checksum = "SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08".parse().unwrap();
        assert_eq!(c.algo, Algorithm::Sha256);
        assert_eq!(c.hex, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }

    #[test]
    fn rejects_unknown_algo_with_ovh_wording() {
        let e = "crc32:00000000".parse::<Checksum>().unwrap_err();
        assert_eq!(e.to_string(), "Bad checkSumType, expected: md5, sha1, sha256, sha512.");
    }

    #[test]
    fn rejects_wrong_length_and_missing_colon() {
        let invalid = |s: &str| DeployError::from(s.parse::<Checksum>().unwrap_err());
        assert!(matches!(invalid("md5:abcd"), DeployError::InvalidRequest(_)));
        assert!(matches!(invalid("md5"), DeployError::InvalidRequest(_)));
    }

    #[test]
    fn known_digests_and_mismatch_message() {
        let cases = [
            (Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (Algorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                Algorithm::Sha512,
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (algo, hex) in cases {
            let t = HashThread::spawn(algo).unwrap();
            let f = t.feeder();
            f.feed_blocking(Bytes::from_static(b"a"));
            f.feed_blocking(Bytes::from_static(b"bc"));
            drop(f);
            let digest = t.finish().unwrap();
            let c = Checksum::new(algo.name(), hex).unwrap();
            verify(&c, &digest).unwrap();
            let wrong = Checksum::new(algo.name(), &"0".repeat(hex.len())).unwrap();
            let msg = verify(&wrong, &digest).unwrap_err().to_string();
            assert_eq!(
                msg,
                format!(
                    "Bad {} for downloaded file, got: {hex} while expecting {}.",
                    algo.name(),
                    "0".repeat(hex.len())
                )
            );
        }
    }

    /// OpenSSL's digests against the RustCrypto crates', on every length
    /// around the block sizes and split at random points, so that the
    /// partial-block paths are crossed (the assembly takes whole blocks).
    #[test]
    fn openssl_digests_match_the_rustcrypto_crates() {
        use proptest::prelude::*;
        use sha2::Digest;
        fn oracle(algo: Algorithm, data: &[u8]) -> Vec<u8> {
            match algo {
                Algorithm::Md5 => md5::Md5::digest(data).to_vec(),
                Algorithm::Sha1 => sha1::Sha1::digest(data).to_vec(),
                Algorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
                Algorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
            }
        }
        let algos = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for algo in algos {
            for len in (0..300).chain([1023, 1024, 1025, 4999]) {
                let mut h = Hasher::new(algo);
                h.update(&data[..len]);
                assert_eq!(h.finish(), oracle(algo, &data[..len]), "{algo:?} of {len} bytes");
            }
        }
        proptest!(|(data in proptest::collection::vec(any::<u8>(), 0..20_000), cuts in proptest::collection::vec(0usize..20_000, 0..8), which in 0usize..4)| {
            let algo = algos[which];
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut h = Hasher::new(algo);
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(h.finish(), oracle(algo, &data));
        });
    }
}
