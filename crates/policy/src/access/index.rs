//! The access map's storage: records in one arena, a hash index for name keys, an exact
//! (address, length) index for address keys, and per-tag sets of the prefix lengths present.
//!
//! Role: store entries while parsing (reporting a duplicate instead of storing it) and find
//! one key without allocating.
//! Must not: allocate on a probe, or depend on the order of hash iteration (nothing here
//! iterates a hash map).
//! Invariants: a record's `start`/`key_len`/`value_len` cut the arena at `str` boundaries;
//! `Record::next` chains only records whose name hash is equal and never forms a cycle
//! (links only point to records pushed later); an address key's host bits are zero; the
//! length set of (tag, family) holds exactly the lengths of that tag's address keys.
//! Memory per entry: 24 bytes of record, its key and value text once, and one hash slot
//! (16 bytes for a name, 8 for an IPv4 key, 32 for an IPv6 key). Address keys have one
//! table per (tag, family, length): a lookup walks lengths, and the small tables of rare
//! lengths (a few CIDR keys) stay in cache instead of sharing one large table.
//!
//! The hashes are fixed functions, not seeded: the keys come from the admin's file, and a
//! client can only probe, never insert, so there is no flooding to defend against.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::{AccessMap, Entry, Tag};

/// No next record in a hash chain.
const END: u32 = u32::MAX;

/// One stored entry: where its key and value sit in the arena.
#[derive(Clone, Copy, Debug)]
pub(super) struct Record {
    pub(super) start: u32,
    pub(super) key_len: u32,
    pub(super) value_len: u32,
    pub(super) line: u32,
    /// Next name record with the same hash, or `END`.
    pub(super) next: u32,
    pub(super) tag: Tag,
}

/// An address key: which (tag, family, length) table, and the masked address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IpKey {
    V4 { table: usize, len: u8, addr: u32 },
    V6 { table: usize, len: u8, addr: u128 },
}

/// Lengths per family: IPv4 0..=32, IPv6 0..=128.
pub(super) const V4_LENS: usize = 33;
pub(super) const V6_LENS: usize = 129;

impl IpKey {
    pub(super) fn v4(tag: Tag, addr: u32, len: u8) -> Self {
        Self::V4 {
            table: tag.index() * V4_LENS + usize::from(len),
            len,
            addr: mask_v4(addr, len),
        }
    }

    pub(super) fn v6(tag: Tag, addr: u128, len: u8) -> Self {
        Self::V6 {
            table: tag.index() * V6_LENS + usize::from(len),
            len,
            addr: mask_v6(addr, len),
        }
    }
}

/// The first `len` bits of `addr` (len 0..=32).
pub(super) fn mask_v4(addr: u32, len: u8) -> u32 {
    // A shift by the full width is "no bits": checked_shl says None there.
    addr & u32::MAX
        .checked_shl(32u32.saturating_sub(len.into()))
        .unwrap_or(0)
}

/// The first `len` bits of `addr` (len 0..=128).
pub(super) fn mask_v6(addr: u128, len: u8) -> u128 {
    addr & u128::MAX
        .checked_shl(128u32.saturating_sub(len.into()))
        .unwrap_or(0)
}

/// A set of prefix lengths 0..=128, walked from the longest down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Lens([u64; 3]);

impl Lens {
    pub(super) fn insert(&mut self, len: u8) {
        if let Some(word) = self.0.get_mut(usize::from(len / 64)) {
            *word |= 1 << (len % 64);
        }
    }

    pub(super) fn contains(&self, len: u8) -> bool {
        self.0
            .get(usize::from(len / 64))
            .is_some_and(|w| w & (1 << (len % 64)) != 0)
    }

    pub(super) fn union(self, other: Self) -> Self {
        let [a, b, c] = self.0;
        let [x, y, z] = other.0;
        Self([a | x, b | y, c | z])
    }

    /// Removes and returns the longest length in the set.
    pub(super) fn pop_longest(&mut self) -> Option<u8> {
        for (i, word) in self.0.iter_mut().enumerate().rev() {
            if *word != 0 {
                let bit = 63 - word.leading_zeros();
                *word &= !(1u64 << bit);
                // i <= 2 and bit <= 63: at most 191, but only 0..=128 are ever inserted.
                return u8::try_from(i as u32 * 64 + bit).ok();
            }
        }
        None
    }
}

/// Builds [`Fast`] hashers for the two indexes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastState;

impl BuildHasher for FastState {
    type Hasher = Fast;
    fn build_hasher(&self) -> Fast {
        Fast(0)
    }
}

/// A multiply-rotate hasher for fixed-size keys (the name index is keyed by a hash already,
/// the address index by integers); SipHash would cost more than the probe itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fast(u64);

const SEED: u64 = 0x517c_c1b7_2722_0a95;

impl Fast {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(SEED);
    }
}

impl Hasher for Fast {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        // The table takes bucket bits from the bottom and tag bits from the top: mix both.
        fmix64(self.0)
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit reaches every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// FNV-1a over the tag and the ASCII-lowercased key, given in pieces so that
/// `user` `@` `domain` needs no joined copy.
pub(super) fn name_hash(tag: Tag, parts: &[&str]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = (0xcbf2_9ce4_8422_2325 ^ u64::from(tag as u8)).wrapping_mul(PRIME);
    for part in parts {
        for b in part.bytes() {
            h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(PRIME);
        }
    }
    h
}

/// True when `stored` equals the concatenation of `parts`, ignoring ASCII case.
fn name_eq(stored: &str, parts: &[&str]) -> bool {
    let mut rest = stored.as_bytes();
    for part in parts {
        match rest.split_at_checked(part.len()) {
            Some((head, tail)) if head.eq_ignore_ascii_case(part.as_bytes()) => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Why a key was not stored: the record that has it already.
pub(super) struct Duplicate {
    pub(super) first: u32,
}

/// The arena outgrew the 32-bit offsets (a map over 4 GiB).
pub(super) struct TooLarge;

impl AccessMap {
    /// Stores a name key (host, domain, e-mail form, or "" for the tag's default).
    pub(super) fn store_name(
        &mut self,
        tag: Tag,
        key: &str,
        value: &str,
        line: u32,
    ) -> Result<Result<(), Duplicate>, TooLarge> {
        let hash = name_hash(tag, &[key]);
        let mut tail = None;
        if let Some(&head) = self.names.get(&hash) {
            let mut idx = head;
            while let Some(rec) = self.records.get(idx as usize) {
                if rec.tag == tag && name_eq(self.entry(rec).key, &[key]) {
                    return Ok(Err(Duplicate { first: idx }));
                }
                tail = Some(idx);
                idx = rec.next;
            }
        }
        let new = self.push(tag, key, value, line)?;
        match tail.and_then(|t| self.records.get_mut(t as usize)) {
            Some(last) => last.next = new,
            None => {
                self.names.insert(hash, new);
            }
        }
        if !key.is_empty()
            && let Some(n) = self.name_keys.get_mut(tag.index())
        {
            *n += 1;
        }
        Ok(Ok(()))
    }

    /// Stores an address key (the caller has checked that `key.addr` has no host bits).
    pub(super) fn store_addr(
        &mut self,
        tag: Tag,
        ip: IpKey,
        key: &str,
        value: &str,
        line: u32,
    ) -> Result<Result<(), Duplicate>, TooLarge> {
        let existing = match ip {
            IpKey::V4 { table, addr, .. } => self.v4_addrs.get(table).and_then(|t| t.get(&addr)),
            IpKey::V6 { table, addr, .. } => self.v6_addrs.get(table).and_then(|t| t.get(&addr)),
        };
        if let Some(&first) = existing {
            return Ok(Err(Duplicate { first }));
        }
        let new = self.push(tag, key, value, line)?;
        let (lens, len) = match ip {
            IpKey::V4 { table, len, addr } => {
                if self.v4_addrs.is_empty() {
                    self.v4_addrs
                        .resize_with(Tag::COUNT * V4_LENS, HashMap::default);
                }
                if let Some(t) = self.v4_addrs.get_mut(table) {
                    t.insert(addr, new);
                }
                (&mut self.v4_lens, len)
            }
            IpKey::V6 { table, len, addr } => {
                if self.v6_addrs.is_empty() {
                    self.v6_addrs
                        .resize_with(Tag::COUNT * V6_LENS, HashMap::default);
                }
                if let Some(t) = self.v6_addrs.get_mut(table) {
                    t.insert(addr, new);
                }
                (&mut self.v6_lens, len)
            }
        };
        if let Some(set) = lens.get_mut(tag.index()) {
            set.insert(len);
        }
        Ok(Ok(()))
    }

    fn push(&mut self, tag: Tag, key: &str, value: &str, line: u32) -> Result<u32, TooLarge> {
        let start = u32::try_from(self.arena.len()).map_err(|_| TooLarge)?;
        let key_len = u32::try_from(key.len()).map_err(|_| TooLarge)?;
        let value_len = u32::try_from(value.len()).map_err(|_| TooLarge)?;
        start
            .checked_add(key_len)
            .and_then(|s| s.checked_add(value_len))
            .ok_or(TooLarge)?;
        let idx = u32::try_from(self.records.len())
            .ok()
            .filter(|i| *i != END)
            .ok_or(TooLarge)?;
        self.arena.push_str(key);
        self.arena.push_str(value);
        self.records.push(Record {
            start,
            key_len,
            value_len,
            line,
            next: END,
            tag,
        });
        Ok(idx)
    }

    /// The entry whose key is exactly `tag` + the concatenated `parts` (any ASCII case).
    pub(super) fn find_name(&self, tag: Tag, parts: &[&str]) -> Option<Entry<'_>> {
        let mut idx = *self.names.get(&name_hash(tag, parts))?;
        while let Some(rec) = self.records.get(idx as usize) {
            let entry = self.entry(rec);
            if rec.tag == tag && name_eq(entry.key, parts) {
                return Some(entry);
            }
            idx = rec.next;
        }
        None
    }

    /// The entry in record `idx`.
    pub(super) fn record(&self, idx: u32) -> Option<Entry<'_>> {
        self.records.get(idx as usize).map(|r| self.entry(r))
    }

    /// The entry stored under exactly this address key.
    pub(super) fn find_addr(&self, ip: IpKey) -> Option<Entry<'_>> {
        let idx = match ip {
            IpKey::V4 { table, addr, .. } => self.v4_addrs.get(table)?.get(&addr),
            IpKey::V6 { table, addr, .. } => self.v6_addrs.get(table)?.get(&addr),
        };
        self.record(*idx?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_v4(0x7f00_0001, 0), 0);
        assert_eq!(mask_v4(0x7f00_0001, 8), 0x7f00_0000);
        assert_eq!(mask_v4(0x7f00_0001, 32), 0x7f00_0001);
        assert_eq!(mask_v4(0x0a01_02ff, 20), 0x0a01_0000);
        assert_eq!(mask_v6(u128::MAX, 0), 0);
        assert_eq!(mask_v6(u128::MAX, 128), u128::MAX);
        assert_eq!(mask_v6(u128::MAX, 16), 0xffff << 112);
    }

    #[test]
    fn lens_walk_longest_first() {
        let mut a = Lens::default();
        for l in [0, 8, 24, 32, 64, 127, 128] {
            a.insert(l);
        }
        let mut b = Lens::default();
        b.insert(20);
        assert!(a.contains(127) && !a.contains(126) && b.contains(20));
        let mut all = a.union(b);
        let mut seen = Vec::new();
        while let Some(l) = all.pop_longest() {
            seen.push(l);
        }
        assert_eq!(seen, [128, 127, 64, 32, 24, 20, 8, 0]);
    }

    #[test]
    fn names_compare_in_pieces() {
        assert!(name_eq("User@Example.org", &["user", "@", "example.ORG"]));
        assert!(!name_eq("user@example.org", &["user", "@"]));
        assert!(!name_eq("user@", &["user", "@", "x"]));
        assert!(name_eq("", &[""]));
        assert_eq!(
            name_hash(Tag::From, &["a", "@", "B"]),
            name_hash(Tag::From, &["A@b"])
        );
        assert_ne!(name_hash(Tag::From, &["a@b"]), name_hash(Tag::To, &["a@b"]));
    }
}
