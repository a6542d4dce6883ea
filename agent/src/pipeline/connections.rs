//! The connections the agent waits on (for their requests, or their ClientHello), by socket
//! cookie: bounded node-wide, and each container (cgroup) may hold only its share, so a
//! container opening connections by the thousand fills its own share and never the others'.

use std::collections::HashMap;

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The node-wide bound.
    Full,
    /// The container's share.
    OverShare,
}

pub struct Connections<V> {
    /// cookie → (cgroup, value)
    entries: HashMap<u64, (u64, V)>,
    per_cgroup: HashMap<u64, usize>,
    total: usize,
    share: usize,
}

impl<V> Connections<V> {
    pub fn new(total: usize, share: usize) -> Self {
        Connections {
            entries: HashMap::new(),
            per_cgroup: HashMap::new(),
            total,
            share,
        }
    }

    /// Takes a connection of `cgroup_id` (a reused cookie's old entry is replaced: cookies are
    /// never reused while a socket lives), or gives it back with why not.
    pub fn insert(&mut self, cookie: u64, cgroup_id: u64, value: V) -> Result<(), (Refused, V)> {
        self.remove(cookie);
        if self.entries.len() >= self.total {
            return Err((Refused::Full, value));
        }
        let held = self.per_cgroup.entry(cgroup_id).or_default();
        if *held >= self.share {
            return Err((Refused::OverShare, value));
        }
        *held += 1;
        self.entries.insert(cookie, (cgroup_id, value));
        Ok(())
    }

    pub fn remove(&mut self, cookie: u64) -> Option<V> {
        let (cgroup_id, value) = self.entries.remove(&cookie)?;
        if let Some(held) = self.per_cgroup.get_mut(&cgroup_id) {
            *held -= 1;
            if *held == 0 {
                self.per_cgroup.remove(&cgroup_id);
            }
        }
        Some(value)
    }

    pub fn get_mut(&mut self, cookie: u64) -> Option<&mut V> {
        self.entries.get_mut(&cookie).map(|(_, v)| v)
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.entries.contains_key(&cookie)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries.iter().map(|(cookie, (_, v))| (*cookie, v))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_fills_its_share_and_never_the_others() {
        let mut table = Connections::new(10, 3);
        for cookie in 0..3 {
            assert_eq!(table.insert(cookie, 1, ()), Ok(()));
        }
        assert_eq!(table.insert(3, 1, ()), Err((Refused::OverShare, ())));
        assert_eq!(
            table.insert(4, 2, ()),
            Ok(()),
            "another container still gets in"
        );
        // Its share comes back as its connections end; a reused cookie is not counted twice.
        table.remove(0);
        assert_eq!(table.insert(5, 1, ()), Ok(()));
        assert_eq!(table.insert(5, 1, ()), Ok(()));
        assert_eq!(table.len(), 4);
        // The node-wide bound holds too.
        for (cookie, cgroup) in (10..).zip(3..6) {
            table.insert(cookie, cgroup, ()).unwrap();
            table.insert(cookie + 100, cgroup, ()).unwrap();
        }
        assert_eq!(table.insert(99, 9, ()), Err((Refused::Full, ())));
    }
}
