//! Reading the crashed (or sampled) process's memory.

/// Read access to a process's memory at its own virtual addresses. Reads
/// either fill the whole buffer or fail: memory that was not captured is an
/// ordinary `false`, never a panic.
pub trait Memory {
    /// Fills `buf` from `addr`; `false` when any byte is not available.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// A little-endian (the only byte order of the supported targets) u64.
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        (**self).read(addr, buf)
    }
}

/// One captured region: the bytes at `base..base+len`.
#[derive(Debug, Clone, Copy)]
pub struct StackSnapshot<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl<'a> StackSnapshot<'a> {
    pub fn new(base: u64, bytes: &'a [u8]) -> Self {
        StackSnapshot { base, bytes }
    }
}

fn read_region(base: u64, bytes: &[u8], addr: u64, buf: &mut [u8]) -> bool {
    let Some(off) = addr.checked_sub(base) else { return false };
    let Ok(off) = usize::try_from(off) else { return false };
    let Some(end) = off.checked_add(buf.len()) else { return false };
    match bytes.get(off..end) {
        Some(src) => {
            buf.copy_from_slice(src);
            true
        }
        None => false,
    }
}

impl Memory for StackSnapshot<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        read_region(self.base, self.bytes, addr, buf)
    }
}

/// Several non-overlapping regions (a core's kept segments), looked up by
/// binary search.
#[derive(Debug, Clone, Default)]
pub struct Regions<B> {
    regions: Vec<(u64, B)>,
}

impl<B: AsRef<[u8]>> Regions<B> {
    pub fn new() -> Self {
        Regions { regions: Vec::new() }
    }

    /// Adds a region; regions are kept sorted by address.
    pub fn insert(&mut self, base: u64, bytes: B) {
        let at = self.regions.partition_point(|(b, _)| *b < base);
        self.regions.insert(at, (base, bytes));
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.regions.iter().map(|(b, v)| (*b, v.as_ref()))
    }

    /// Total bytes held.
    pub fn total_len(&self) -> usize {
        self.regions.iter().map(|(_, v)| v.as_ref().len()).sum()
    }
}

impl<B: AsRef<[u8]>> Memory for Regions<B> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let i = self.regions.partition_point(|(b, _)| *b <= addr);
        if i == 0 {
            return false;
        }
        let (base, bytes) = &self.regions[i - 1];
        read_region(*base, bytes.as_ref(), addr, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn regions_read_only_what_they_hold() {
        let mut r = Regions::new();
        r.insert(0x2000, vec![2u8; 16]);
        r.insert(0x1000, vec![1u8; 16]);
        assert_eq!(r.read_u64(0x1008), Some(0x0101010101010101));
        assert_eq!(r.read_u64(0x1009), None);
        assert_eq!(r.read_u64(0x2000), Some(0x0202020202020202));
        assert_eq!(r.read_u64(0xfff), None);
        assert_eq!(r.read_u64(u64::MAX - 3), None);
        let s = StackSnapshot::new(u64::MAX - 7, &[0u8; 8]);
        assert_eq!(s.read_u64(u64::MAX - 7), Some(0));
        assert_eq!(s.read_u64(u64::MAX), None);
    }
}
