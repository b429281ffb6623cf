//! A value per page (or per word of page bits), for tables whose length comes from the
//! input: a RAM block list may claim any size, so the table holds only the chunks in which
//! something was set, and its memory follows the pages a stream carries.

use std::collections::BTreeMap;

/// A `u64` per index, 0 until set, kept in chunks of [`PageTable::CHUNK`] values that exist
/// once one of their values is not 0.
#[derive(Debug, Default, Clone)]
pub(crate) struct PageTable(BTreeMap<u64, Box<[u64; PageTable::CHUNK]>>);

impl PageTable {
    /// Values per chunk: 32 KiB of them.
    pub const CHUNK: usize = 4096;
    const CHUNK_VALUES: u64 = 4096;

    fn place(index: u64) -> (u64, usize) {
        let within = usize::try_from(index % Self::CHUNK_VALUES).unwrap_or(0);
        (index / Self::CHUNK_VALUES, within)
    }

    /// The value at `index`.
    pub fn get(&self, index: u64) -> u64 {
        let (chunk, within) = Self::place(index);
        self.0
            .get(&chunk)
            .and_then(|values| values.get(within))
            .copied()
            .unwrap_or(0)
    }

    /// Sets the value at `index`; setting 0 where nothing was set allocates nothing.
    pub fn set(&mut self, index: u64, value: u64) {
        let (chunk, within) = Self::place(index);
        let values = match (self.0.get_mut(&chunk), value) {
            (Some(values), _) => values,
            (None, 0) => return,
            (None, _) => self
                .0
                .entry(chunk)
                .or_insert_with(|| Box::new([0; Self::CHUNK])),
        };
        if let Some(slot) = values.get_mut(within) {
            *slot = value;
        }
    }

    /// The chunks that exist, in order, each with the index of its first value.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &[u64])> + '_ {
        self.0
            .iter()
            .map(|(chunk, values)| (chunk.saturating_mul(Self::CHUNK as u64), values.as_slice()))
    }
}

/// A set of page numbers: one bit per page, in the words of a [`PageTable`].
#[derive(Debug, Default, Clone)]
pub(crate) struct PageBits(PageTable);

impl PageBits {
    /// Whether page `i` is in the set.
    pub fn get(&self, i: u64) -> bool {
        self.0.get(i / 64) & (1 << (i % 64)) != 0
    }

    /// Puts page `i` in the set or takes it out.
    pub fn set(&mut self, i: u64, on: bool) {
        let word = self.0.get(i / 64);
        let bit = 1 << (i % 64);
        self.0
            .set(i / 64, if on { word | bit } else { word & !bit });
    }

    /// How many pages are in the set.
    pub fn count(&self) -> u64 {
        self.0
            .chunks()
            .flat_map(|(_, words)| words.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// The set as the bytes of a bitmap of little-endian 64-bit words (QEMU's mapped-ram
    /// bitmap), in pieces: each with its byte offset in that bitmap. Where no piece is, the
    /// bitmap is zeros.
    pub fn bitmap_pieces(&self) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
        self.0.chunks().map(|(first_word, words)| {
            let bytes = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            (first_word.saturating_mul(8), bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_only_what_was_set() {
        let mut t = PageTable::default();
        t.set(1 << 50, 7);
        t.set(3, 0);
        assert_eq!((t.get(1 << 50), t.get(3), t.get(4)), (7, 0, 0));
        assert_eq!(t.chunks().count(), 1);
        t.set(1 << 50, 0);
        assert_eq!(t.get(1 << 50), 0);

        let mut b = PageBits::default();
        for i in [0, 63, 64, 1 << 40] {
            b.set(i, true);
        }
        b.set(63, false);
        assert!(b.get(0) && !b.get(63) && b.get(64) && b.get(1 << 40) && !b.get(1));
        assert_eq!(b.count(), 3);
        let pieces: Vec<(u64, Vec<u8>)> = b.bitmap_pieces().collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].0, 0);
        assert_eq!(&pieces[0].1[..9], &[1, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Page 2^40's word starts its chunk: its piece starts at that page's byte.
        assert_eq!(pieces[1].0, (1u64 << 40) / 8);
    }
}
