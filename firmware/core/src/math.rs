//! `exp` and `ln` for `f32`: the platform's (through `std`) when available, else `libm`, plus
//! branch-free polynomial versions for the hot loops, which the compiler can vectorize.
//!
//! The polynomial versions follow the classic Cephes `expf` / `logf` reductions; their relative
//! error is below 2e-7 on the domains stated, far inside the 1e-5 tolerance the scores are
//! tested to against an f64 reference.

/// `e^x`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    #[cfg(any(test, feature = "std"))]
    return x.exp();
    #[cfg(not(any(test, feature = "std")))]
    return libm::expf(x);
}

/// Natural logarithm.
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    #[cfg(any(test, feature = "std"))]
    return x.ln();
    #[cfg(not(any(test, feature = "std")))]
    return libm::logf(x);
}

/// Below this, `e^x` is under the smallest normal `f32`; [`fast_exp`] returns 0 there.
const EXP_UNDERFLOW: f32 = -87.336_54;

/// Adding and subtracting `1.5 * 2^23` rounds an `f32` of magnitude below `2^22` to the
/// nearest integer without a call to `round` (which `core` lacks on some targets).
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `2^23`: an `f32` integer `k` in `[0, 2^23)` plus this has `k` as its low mantissa bits.
const EXPONENT_MAGIC: f32 = 8_388_608.0;

/// `e^x` for `x <= 0` (including `-inf`, which gives exactly 0), without branches.
///
/// `e^x = 2^n * e^r` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`; `e^r` by a degree-7
/// polynomial, `2^n` by writing the exponent bits. `fast_exp(0) = 1` exactly. Values of `x` that
/// would give a subnormal result give 0 (an absolute error below 1.2e-38).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    // ln 2 split so that `n * LN2_HIGH` is exact for |n| <= 127.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;

    let underflow = x < EXP_UNDERFLOW;
    let x = if underflow { 0.0 } else { x };

    let n = (x * core::f32::consts::LOG2_E + ROUNDING_MAGIC) - ROUNDING_MAGIC;
    let r = x - n * LN2_HIGH - n * LN2_LOW;

    // e^r = 1 + r + r^2 * p(r): Cephes minimax coefficients.
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;

    // n is in [-126, 0] here, so the biased exponent k = n + 127 is a normal one. Adding 2^23
    // puts k in the low mantissa bits (exactly: k < 2^23), and the shift moves it into the
    // exponent field while the bits of 2^23 fall off the top. This avoids a float-to-int `as`,
    // whose saturating semantics keep the loops around `fast_exp` from vectorizing.
    let biased = n + (127.0 + EXPONENT_MAGIC);
    let scale = f32::from_bits(biased.to_bits() << 23);
    if underflow { 0.0 } else { er * scale }
}

/// `ln x` for finite, positive, normal `x`, without branches; `fast_ln(1) = 0` exactly.
///
/// `x = 2^e * m` with `m` in `[sqrt(1/2), sqrt(2))`, `ln x = e ln 2 + ln m`, `ln m` by the
/// Cephes degree-9 polynomial in `m - 1`.
#[inline(always)]
pub(crate) fn fast_ln(x: f32) -> f32 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;

    // Mantissa in [0.5, 1) and the matching exponent.
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 126;
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);

    // Move the mantissa to [sqrt(1/2), sqrt(2)) so that m - 1 is small either side of 0.
    let low = mantissa < core::f32::consts::FRAC_1_SQRT_2;
    let e = (exponent - i32::from(low)) as f32;
    let m = if low { mantissa + mantissa - 1.0 } else { mantissa - 1.0 };

    let z = m * m;
    let mut p = 7.037_683_6e-2;
    p = p * m - 0.115_146_1;
    p = p * m + 0.116_769_98;
    p = p * m - 0.124_201_41;
    p = p * m + 0.142_493_23;
    p = p * m - 0.166_680_57;
    p = p * m + 0.200_007_15;
    p = p * m - 0.249_999_94;
    p = p * m + 0.333_333_3;
    let y = p * m * z + e * LN2_LOW - 0.5 * z;
    m + y + e * LN2_HIGH
}

/// `floor(x)` for `0 <= x < 2^22`, as an integer, with float additions only: a float-to-int
/// `as` has saturating semantics that keep the compiler from vectorizing the loops around it.
///
/// Adding `2^23` rounds `x` to an integer (to nearest); taking 1 off where that went up floors
/// it, and adding `2^23` again puts that integer in the low mantissa bits.
#[inline(always)]
pub(crate) fn floor_small(x: f32) -> u32 {
    let nearest = (x + EXPONENT_MAGIC) - EXPONENT_MAGIC;
    let floor = if nearest > x { nearest - 1.0 } else { nearest };
    (floor + EXPONENT_MAGIC).to_bits() & 0x007f_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_small_matches_truncation() {
        // Every integer and its float neighbours up to 2^12, and a sweep of [0, 2^22).
        let mut values = vec![0.0f32, -0.0, 0.5, 255.5, 4_194_303.5];
        for k in 0..=4096u32 {
            let v = k as f32;
            values.extend([v, f32::from_bits(v.to_bits() + 1), v + 0.5]);
            if k > 0 {
                values.push(f32::from_bits(v.to_bits() - 1));
            }
        }
        values.extend((0..1_000_000).map(|i| i as f32 * 4.194_303));
        for x in values {
            assert_eq!(floor_small(x), x as u32, "{x}");
        }
    }

    #[test]
    fn fast_exp_matches_f64_on_its_domain() {
        // Relative error below 2e-7 (a few f32 ulps) everywhere on [-87.3, 0].
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.3 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
    }

    #[test]
    fn fast_exp_edges_are_exact() {
        assert_eq!(fast_exp(0.0), 1.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(-1e30), 0.0);
        assert_eq!(fast_exp(-100.0), 0.0);
    }

    #[test]
    fn fast_ln_matches_f64_on_its_domain() {
        // Absolute error below 2e-7 on [1, 300], the range of a softmax denominator.
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = 1.0 + 299.0 * i as f32 / 200_000.0;
            let want = (x as f64).ln();
            worst = worst.max((fast_ln(x) as f64 - want).abs() / want.max(1.0));
        }
        assert!(worst < 2e-7, "worst error {worst}");
        assert_eq!(fast_ln(1.0), 0.0);
        assert!((fast_ln(1e-30) as f64 - (1e-30f64).ln()).abs() < 1e-5);
    }
}
