//! CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes it with `crc64.ISO`: tar-split
//! records each file's payload checksum this way, and containers/storage checks it when it
//! rebuilds a tar from a partially pulled layer. On x86-64 with PCLMULQDQ the bulk is folded 128
//! bytes at a time with carry-less multiplication (Intel's "Fast CRC Computation for Generic
//! Polynomials Using PCLMULQDQ"; constants are x^n mod P, bit-reflected, checked by the tests
//! against the table); elsewhere, and for the ends, slicing by 8. [`combine`] joins the
//! checksums of consecutive pieces, so the pieces of a large file are checksummed in parallel.

use std::sync::OnceLock;

/// The reversed ISO 3309 polynomial (Go's `crc64.ISO`).
const POLY: u64 = 0xD800_0000_0000_0000;

fn tables() -> &'static [[u64; 256]; 8] {
    static T: OnceLock<Box<[[u64; 256]; 8]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([[0u64; 256]; 8]);
        for i in 0..256u64 {
            let mut crc = i;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            t[0][i as usize] = crc;
        }
        for i in 0..256 {
            let mut crc = t[0][i];
            for j in 1..8 {
                crc = t[0][(crc & 0xff) as usize] ^ (crc >> 8);
                t[j][i] = crc;
            }
        }
        t
    })
}

/// Continues `crc` (0 for a fresh checksum) over `data`.
pub fn update(crc: u64, data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= 256
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
        {
            let bulk = data.len() / 128 * 128;
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            let st = unsafe { clmul::fold(!crc, &data[..bulk]) };
            return !table(st, &data[bulk..]);
        }
    }
    !table(!crc, data)
}

/// The table-driven update of a raw (not inverted) state.
fn table(mut crc: u64, data: &[u8]) -> u64 {
    let t = tables();
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        crc ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        crc = t[7][(crc & 0xff) as usize]
            ^ t[6][((crc >> 8) & 0xff) as usize]
            ^ t[5][((crc >> 16) & 0xff) as usize]
            ^ t[4][((crc >> 24) & 0xff) as usize]
            ^ t[3][((crc >> 32) & 0xff) as usize]
            ^ t[2][((crc >> 40) & 0xff) as usize]
            ^ t[1][((crc >> 48) & 0xff) as usize]
            ^ t[0][(crc >> 56) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc as u8) ^ b) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(target_arch = "x86_64")]
mod clmul {
    use std::arch::x86_64::*;

    /// x^n mod P, bit-reflected, for folding by 128 bytes: (x^1023, x^1087).
    const FOLD_128: (u64, u64) = (0xb001_0000_0001_0000, 0xf501_b000_0001_b000);
    /// The same for folding the eight lanes into one: by 112, 96, ..., 16 bytes.
    const FOLD_LANES: [(u64, u64); 7] = [
        (0xe014_5145_1450_1501, 0x771d_b6db_6db7_1c71),
        (0xa101_1011_0111_0001, 0x1ab1_ab1a_b1aa_b001),
        (0xf445_0144_4500_0001, 0x6aab_71da_ab70_0001),
        (0xb100_0101_0000_0001, 0x01b0_01b1_b000_0001),
        (0xe145_1500_0000_0001, 0x76db_6c70_0000_0001),
        (0xa011_0000_0000_0001, 0x1b1a_b000_0000_0001),
        (0xf500_0000_0000_0001, 0x6b70_0000_0000_0001),
    ];
    /// x^127 mod P (the last fold by 8 bytes), and P and floor(x^128 / P) for Barrett's
    /// reduction, bit-reflected.
    const K_127: u64 = 0xf500_0000_0000_0001;
    const POLY: u64 = 0xb000_0000_0000_0001;
    const MU: u64 = 0xb000_0000_0000_0001;

    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    fn pair(high: u64, low: u64) -> __m128i {
        _mm_set_epi64x(high as i64, low as i64)
    }

    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    fn fold16(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128(x, k, 0x00),
            _mm_clmulepi64_si128(x, k, 0x11),
        )
    }

    /// Folds `data` (a multiple of 128 bytes, at least 128) into the raw state `st`.
    #[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
    pub(super) fn fold(st: u64, data: &[u8]) -> u64 {
        assert!(data.len() >= 128 && data.len().is_multiple_of(128));
        let load = |i: usize| {
            let block: &[u8; 16] = data[i..i + 16].try_into().expect("16 bytes");
            // SAFETY: `block` is 16 readable bytes; loadu has no alignment requirement.
            unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
        };
        let mut x = [_mm_setzero_si128(); 8];
        for (i, lane) in x.iter_mut().enumerate() {
            *lane = load(i * 16);
        }
        x[0] = _mm_xor_si128(x[0], pair(0, st));
        let k = pair(FOLD_128.0, FOLD_128.1);
        let mut at = 128;
        while at < data.len() {
            for (i, lane) in x.iter_mut().enumerate() {
                *lane = _mm_xor_si128(fold16(*lane, k), load(at + i * 16));
            }
            at += 128;
        }
        let mut acc = x[7];
        for (lane, (hi, lo)) in x.iter().zip(FOLD_LANES) {
            acc = _mm_xor_si128(acc, fold16(*lane, pair(hi, lo)));
        }
        // Fold 128 bits to 64, then Barrett-reduce.
        let acc = _mm_xor_si128(
            _mm_clmulepi64_si128(acc, pair(0, K_127), 0x00),
            _mm_srli_si128(acc, 8),
        );
        let pm = pair(POLY, MU);
        let t1 = _mm_clmulepi64_si128(acc, pm, 0x00);
        let h = _mm_slli_si128(t1, 8);
        let l = _mm_clmulepi64_si128(t1, pm, 0x10);
        _mm_extract_epi64(_mm_xor_si128(_mm_xor_si128(h, l), acc), 1) as u64
    }
}

fn times(mat: &[u64; 64], mut vec: u64) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while vec != 0 {
        if vec & 1 == 1 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

fn square(out: &mut [u64; 64], mat: &[u64; 64]) {
    for n in 0..64 {
        out[n] = times(mat, mat[n]);
    }
}

/// The checksum of A followed by B, from A's checksum, B's checksum and B's length (zlib's
/// `crc32_combine`, for 64 bits).
pub fn combine(mut crc1: u64, crc2: u64, mut len2: u64) -> u64 {
    if len2 == 0 {
        return crc1;
    }
    let mut even = [0u64; 64];
    let mut odd = [0u64; 64];
    odd[0] = POLY;
    let mut row = 1u64;
    for o in odd.iter_mut().skip(1) {
        *o = row;
        row <<= 1;
    }
    square(&mut even, &odd);
    square(&mut odd, &even);
    loop {
        square(&mut even, &odd);
        if len2 & 1 == 1 {
            crc1 = times(&even, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
        square(&mut odd, &even);
        if len2 & 1 == 1 {
            crc1 = times(&odd, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
    }
    crc1 ^ crc2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_go_crc64_iso() {
        // Go: crc64.Checksum([]byte("hello world"), crc64.MakeTable(crc64.ISO)) = 0xb9cf3f572ad9ac3e (a bit-at-a-time implementation of Go's algorithm)
        assert_eq!(update(0, b"hello world"), 0xb9cf_3f57_2ad9_ac3e);
        assert_eq!(update(0, b""), 0);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let bytewise = data
            .iter()
            .fold(0, |c, b| update(c, std::slice::from_ref(b)));
        assert_eq!(update(0, &data), bytewise);
    }

    #[test]
    fn combine_equals_one_pass() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 253) as u8).collect();
        for cut in [0, 1, 7, 8, 4096, 50_000, 100_003] {
            let (a, b) = data.split_at(cut);
            assert_eq!(
                combine(update(0, a), update(0, b), b.len() as u64),
                update(0, &data),
                "cut {cut}"
            );
        }
    }
}
