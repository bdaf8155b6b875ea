//! Shared files the index would refuse, left out of a registration with a
//! warning once per file: used by a peer's registrar and by the store, so
//! every sharer applies the index's own rule ([`SharedFile::check`]) and
//! says what it left out.

use std::collections::{HashMap, HashSet};

use common::id::FileId;
use common::index_proto::SharedFile;
use tracing::warn;

/// Shared files the index would refuse ([`SharedFile::check`], the index's
/// own rule), each warned about once for as long as it stays in the share:
/// not on every rescan, not on every reconnection.
#[derive(Debug, Default)]
pub struct Refusals {
    warned: HashSet<String>,
}

impl Refusals {
    /// Drops from `listing` what the index would refuse, warning once per
    /// name with the reason, and returns how many were dropped. A name that
    /// leaves the share is forgotten, so a new file by that name is warned
    /// about again.
    pub fn filter(&mut self, listing: &mut HashMap<FileId, SharedFile>) -> usize {
        let mut still = HashSet::new();
        listing.retain(|_, f| {
            let Err(reason) = f.check() else { return true };
            if !self.warned.contains(&f.name) {
                warn!(
                    name = %common::names::escape_for_terminal(&f.name),
                    %reason,
                    "not registering a shared file the index would refuse; rename it to share it"
                );
            }
            still.insert(f.name.clone());
            false
        });
        let refused = still.len();
        self.warned = still;
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> HashMap<FileId, SharedFile> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let id = FileId([i as u8; 32]);
                let f = SharedFile {
                    id,
                    name: name.to_string(),
                    size: 1,
                };
                (id, f)
            })
            .collect()
    }

    #[test]
    fn refused_files_are_left_out_and_remembered_while_present() {
        let mut refusals = Refusals::default();
        let mut l = listing(&["ok.txt", "a\nb", "x\u{202E}y"]);
        assert_eq!(refusals.filter(&mut l), 2);
        assert_eq!(l.len(), 1);
        assert_eq!(refusals.warned.len(), 2);
        // Gone from the share: forgotten, so its return is warned about again.
        let mut l = listing(&["ok.txt", "a\nb"]);
        assert_eq!(refusals.filter(&mut l), 1);
        assert!(refusals.warned.contains("a\nb") && refusals.warned.len() == 1);
    }
}
