//! A fixed-capacity list that is `Copy` and serializes as a plain sequence.

use core::fmt;
use core::ops::Deref;

/// Up to `N` items stored inline, in the order they were pushed.
///
/// Unlike `heapless::Vec` it is `Copy` (so [`crate::FrameStats`] stays `Copy`), and with the
/// `serde` feature it serializes as a sequence of its items only, not of all `N` slots.
#[derive(Clone, Copy)]
pub struct FixedList<T, const N: usize> {
    len: usize,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> Default for FixedList<T, N> {
    fn default() -> Self {
        Self { len: 0, items: [T::default(); N] }
    }
}

impl<T, const N: usize> FixedList<T, N> {
    /// Most items the list holds.
    pub const CAPACITY: usize = N;

    /// Appends `item`.
    ///
    /// # Errors
    /// Hands `item` back when the list is full.
    pub fn try_push(&mut self, item: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// The items as a slice.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T, const N: usize> Deref for FixedList<T, N> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for FixedList<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: PartialEq, const N: usize> PartialEq for FixedList<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(feature = "defmt")]
impl<T: defmt::Format, const N: usize> defmt::Format for FixedList<T, N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=[?]}", self.as_slice())
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use core::marker::PhantomData;

    use super::FixedList;

    impl<T: serde::Serialize, const N: usize> serde::Serialize for FixedList<T, N> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.as_slice())
        }
    }

    impl<'de, T, const N: usize> serde::Deserialize<'de> for FixedList<T, N>
    where
        T: serde::Deserialize<'de> + Copy + Default,
    {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor<T, const N: usize>(PhantomData<T>);

            impl<'de, T, const N: usize> serde::de::Visitor<'de> for Visitor<T, N>
            where
                T: serde::Deserialize<'de> + Copy + Default,
            {
                type Value = FixedList<T, N>;

                fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    write!(f, "a sequence of at most {N} items")
                }

                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Self::Value, A::Error> {
                    let mut list = FixedList::default();
                    while let Some(item) = seq.next_element()? {
                        if list.try_push(item).is_err() {
                            return Err(serde::de::Error::invalid_length(N + 1, &self));
                        }
                    }
                    Ok(list)
                }
            }

            deserializer.deserialize_seq(Visitor::<T, N>(PhantomData))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_list_hands_the_item_back() {
        let mut list = FixedList::<u8, 2>::default();
        assert_eq!(list.try_push(1), Ok(()));
        assert_eq!(list.try_push(2), Ok(()));
        assert_eq!(list.try_push(3), Err(3));
        assert_eq!(list.as_slice(), &[1, 2]);
    }
}
