//! One logging shim for the whole crate: routes to `defmt`, to `log`, or to nothing.
//!
//! Call sites use `crate::debug!` and friends with `log`-style format strings that `defmt`
//! also accepts (`{}` placeholders only), so the same line works on both back ends.

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("features `defmt` and `log` are exclusive: enable one logging back end, not both");

macro_rules! shim {
    ($name:ident, $d:tt) => {
        /// Logs through the enabled back end, or compiles to nothing.
        #[allow(unused_macros)]
        macro_rules! $name {
                                            ($d($d arg:tt)*) => {{
                                                #[cfg(feature = "defmt")]
                                                ::defmt::$name!($d($d arg)*);
                                                #[cfg(feature = "log")]
                                                ::log::$name!($d($d arg)*);
                                                #[cfg(not(any(feature = "defmt", feature = "log")))]
                                                {
                                                    let _ = ($d($d arg)*,);
                                                }
                                            }};
                                        }
        #[allow(unused_imports)]
        pub(crate) use $name;
    };
}

shim!(trace, $);
shim!(debug, $);
shim!(info, $);
