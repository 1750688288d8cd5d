//! The four digests from OpenSSL's libcrypto, built from source into the
//! agent (`openssl-sys`'s `vendored` feature: static, also for musl).
//!
//! Why not the pure-Rust crates: measured on the same core, OpenSSL's
//! assembly hashes SHA-512 (its AVX2 + BMI2 path) and MD5 a third faster
//! than the RustCrypto crates and `ring`, and ties them on SHA-1 and
//! SHA-256 (SHA-NI). On a 10 GbE link SHA-512 is what bounds a deployment,
//! so the hash must run at the machine's best speed; ARCHITECTURE.md has
//! the figures. The legacy one-shot `MD5_*`/`SHA*_*` functions are used,
//! not EVP: they need no provider, so only the digest code is linked.
//!
//! Unsafe code is confined here: each context is plain integers, valid
//! when zeroed, initialised by its `*_Init` before use, and only ever
//! passed to its own algorithm's functions with a live slice.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_uchar, c_uint, c_void};

use openssl_sys as ffi;

use super::Algorithm;

/// `MD5_CTX` from `openssl/md5.h` (`openssl-sys` does not declare MD5).
#[repr(C)]
#[derive(Clone)]
struct Md5Ctx {
    abcd: [c_uint; 4],
    nl: c_uint,
    nh: c_uint,
    data: [c_uint; 16],
    num: c_uint,
}

extern "C" {
    fn MD5_Init(c: *mut Md5Ctx) -> c_int;
    fn MD5_Update(c: *mut Md5Ctx, data: *const c_void, len: usize) -> c_int;
    fn MD5_Final(md: *mut c_uchar, c: *mut Md5Ctx) -> c_int;
}

type Init<C> = unsafe extern "C" fn(*mut C) -> c_int;
type Update<C> = unsafe extern "C" fn(*mut C, *const c_void, usize) -> c_int;
type Final<C> = unsafe extern "C" fn(*mut c_uchar, *mut C) -> c_int;

#[derive(Clone)]
enum Ctx {
    Md5(Md5Ctx),
    Sha1(ffi::SHA_CTX),
    Sha256(ffi::SHA256_CTX),
    Sha512(ffi::SHA512_CTX),
}

/// A running digest of any of the supported algorithms.
#[derive(Clone)]
pub struct Hasher {
    algo: Algorithm,
    ctx: Ctx,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.algo).finish()
    }
}

// The functions below return 1 on success; for in-memory digests there is
// no failure to report (OpenSSL's own wrappers ignore the result too).
fn init<C>(f: Init<C>) -> C {
    // SAFETY: `C` is a context of integers only, for which all-zero is a
    // valid value; `f` is its algorithm's init, which sets it up.
    unsafe {
        let mut ctx: C = std::mem::zeroed();
        f(&mut ctx);
        ctx
    }
}

fn update<C>(ctx: &mut C, f: Update<C>, data: &[u8]) {
    // SAFETY: `ctx` was set up by the same algorithm's init; `data` is a
    // live slice of `data.len()` bytes.
    unsafe { f(ctx, data.as_ptr().cast(), data.len()) };
}

fn finish<C>(ctx: &mut C, f: Final<C>, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: `out` holds the algorithm's digest length.
    unsafe { f(out.as_mut_ptr(), ctx) };
    out
}

impl Hasher {
    /// A fresh digest of `algo`.
    pub fn new(algo: Algorithm) -> Self {
        let ctx = match algo {
            Algorithm::Md5 => Ctx::Md5(init(MD5_Init)),
            Algorithm::Sha1 => Ctx::Sha1(init(ffi::SHA1_Init)),
            Algorithm::Sha256 => Ctx::Sha256(init(ffi::SHA256_Init)),
            Algorithm::Sha512 => Ctx::Sha512(init(ffi::SHA512_Init)),
        };
        Hasher { algo, ctx }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.ctx {
            Ctx::Md5(c) => update(c, MD5_Update, data),
            Ctx::Sha1(c) => update(c, ffi::SHA1_Update, data),
            Ctx::Sha256(c) => update(c, ffi::SHA256_Update, data),
            Ctx::Sha512(c) => update(c, ffi::SHA512_Update, data),
        }
    }

    /// The digest.
    pub fn finish(mut self) -> Vec<u8> {
        match &mut self.ctx {
            Ctx::Md5(c) => finish(c, MD5_Final, 16),
            Ctx::Sha1(c) => finish(c, ffi::SHA1_Final, 20),
            Ctx::Sha256(c) => finish(c, ffi::SHA256_Final, 32),
            Ctx::Sha512(c) => finish(c, ffi::SHA512_Final, 64),
        }
    }
}
