//! `exp` and `ln` for `f32`: the platform's (through `std`) when available, else `libm`.

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
