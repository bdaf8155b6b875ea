//! Turning what the user typed (`peer get TARGET`, `peer serve --fetch
//! TARGET`) into one file, the same way in every mode.
//!
//! The target is parsed once ([`Target`]: a 64-digit id, an id prefix of at
//! least 8 hex digits, or an exact name) and its candidates are gathered
//! where the mode looks for files: the index ([`resolve_at_index`], hybrid
//! and client-server) or a flooding search's hits ([`resolve_in_hits`],
//! p2p). Then one rule, [`common::target::pick`], decides: nothing is
//! "not found", one file is the answer, several different files are listed
//! so the user can choose.
//!
//! Names are compared after normalization (`common::names::normalize`,
//! NFKC and lower case), against the whole name or its last component, and
//! against every holder's name, not only the one the index shows. Exact
//! names never go through the search-word limits: the index answers
//! `LookupName` for any name that can be registered.

use common::id::FileId;
use common::index_proto::SearchHit;
use common::names::{escape_for_terminal, name_matches, normalize};
pub use common::target::{pick, IdPrefix, Picked, Target, TargetError};

use crate::index_client::{IndexClient, IndexError};
use crate::overlay::search::P2pHit;

/// Why a target did not come to one file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{place} {}{target} ({hint})", match (.place.ends_with(':'), .kind) {
        (false, Kind::Name) => "offers a file named ",
        (false, Kind::Prefix) => "offers a file whose id starts with ",
        (false, Kind::Id) => "offers ",
        (true, Kind::Name) => "no file named ",
        (true, Kind::Prefix) => "no file whose id starts with ",
        (true, Kind::Id) => "no file ",
    })]
    NotFound {
        target: String,
        kind: Kind,
        /// Where it was looked for, as the subject of "offers"
        /// ("no online peer", "no node within 7 hops"), or ending in a colon
        /// before "no file named …" ("nothing in the server's store:").
        place: String,
        /// What to try next.
        hint: String,
    },
    #[error("{} matches {} different files; pass more digits of the id, or the whole id:\n{}",
        escape_for_terminal(&format!("{:?}", .target)), .candidates.len(),
        .candidates.iter().map(|(id, n)| format!("  {id}  {}", escape_for_terminal(n))).collect::<Vec<_>>().join("\n"))]
    Ambiguous {
        target: String,
        /// Each candidate's full id and name.
        candidates: Vec<(FileId, String)>,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What kind of target was not found (for the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Id,
    Prefix,
    Name,
}

fn kind(target: &Target) -> Kind {
    match target {
        Target::Id(_) => Kind::Id,
        Target::Prefix(_) => Kind::Prefix,
        Target::Name(_) => Kind::Name,
    }
}

/// A target resolved to one file: its id and the name to save it under
/// (the holder's name that matched an exact-name target, else the name
/// most holders use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub id: FileId,
    pub name: String,
}

/// Applies the one rule to candidate `hits`.
fn decide(
    target: &Target,
    hits: Vec<Chosen>,
    place: &str,
    hint: &str,
) -> Result<Chosen, ResolveError> {
    match pick(hits, |c| c.id) {
        Picked::One(c) => Ok(c),
        Picked::NotFound => Err(ResolveError::NotFound {
            target: match target {
                Target::Name(n) => format!("\"{}\"", escape_for_terminal(n)),
                other => other.to_string(),
            },
            kind: kind(target),
            place: place.into(),
            hint: hint.into(),
        }),
        Picked::Ambiguous(all) => Err(ResolveError::Ambiguous {
            target: target.to_string(),
            candidates: all.into_iter().map(|c| (c.id, c.name)).collect(),
        }),
    }
}

/// Which holders count when resolving at an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holders {
    /// Any live peer (hybrid mode).
    Any,
    /// The index server's own store (client-server mode: it is the only
    /// source, so files only peers hold are not candidates).
    Store,
}

/// Resolves `target` at the index (`LookupPrefix`, `LookupName`). A full id
/// is taken as it is, without asking (whether anyone offers it is the
/// caller's next question).
pub async fn resolve_at_index(
    client: &mut IndexClient,
    target: &Target,
    holders: Holders,
) -> Result<Chosen, ResolveError> {
    let mut hits: Vec<SearchHit> = Vec::new();
    match target {
        Target::Id(id) => {
            return Ok(Chosen {
                id: *id,
                name: String::new(),
            })
        }
        Target::Prefix(p) => {
            hits.extend(client.lookup_prefix(p).await?);
            // A prefix may also be a file's name.
            hits.extend(client.lookup_name(p.as_str()).await?);
        }
        Target::Name(n) => hits.extend(client.lookup_name(n).await?),
    }
    let mut chosen = Vec::with_capacity(hits.len());
    for h in hits {
        if holders == Holders::Store {
            let sources = client.lookup(h.id).await?.map(|(_, _, s)| s);
            let stored = sources
                .iter()
                .flatten()
                .any(|s| s.nick.as_deref() == Some(index_server::store::STORE_NICK));
            if !stored {
                continue;
            }
        }
        chosen.push(Chosen {
            id: h.id,
            name: h.name,
        });
    }
    let (place, hint) = match holders {
        Holders::Any => ("no online peer", "try `peer search` to see what is there"),
        Holders::Store => (
            "nothing in the server's store:",
            "upload it with `peer put`, or use the hybrid mode to fetch from peers",
        ),
    };
    decide(target, chosen, place, hint)
}

/// Resolves `target` among the hits of a flooding search; every name a
/// node answered with counts.
pub fn resolve_in_hits<'a>(
    target: &Target,
    hits: &'a [P2pHit],
    ttl: u8,
) -> Result<(&'a P2pHit, Chosen), ResolveError> {
    let key = target.name().map(normalize);
    let mut chosen = Vec::new();
    for h in hits {
        let Ok(id) = h.id.parse::<FileId>() else {
            continue;
        };
        let by_id = match target {
            Target::Id(want) => *want == id,
            Target::Prefix(p) => p.matches(&id),
            Target::Name(_) => false,
        };
        let named = key
            .as_deref()
            .and_then(|k| h.names.iter().find(|n| name_matches(n, k)));
        if by_id || named.is_some() {
            let name = named.cloned().unwrap_or_else(|| h.name.clone());
            chosen.push((h, Chosen { id, name }));
        }
    }
    let place = format!("no node within {ttl} hops");
    let hint = "raise --ttl or --wait, or try another --via node";
    let picked = decide(
        target,
        chosen.iter().map(|(_, c)| c.clone()).collect(),
        &place,
        hint,
    )?;
    let hit = chosen
        .iter()
        .find(|(_, c)| c.id == picked.id)
        .map(|(h, _)| *h)
        .ok_or_else(|| ResolveError::NotFound {
            target: target.to_string(),
            kind: kind(target),
            place: place.clone(),
            hint: hint.into(),
        })?;
    Ok((hit, picked))
}

/// The words of a flooding query for `target`: the id, the prefix, or the
/// whole name as one word (nodes match a single word against whole names
/// and id prefixes too, so no word limit applies).
pub fn overlay_words(target: &Target) -> Vec<String> {
    match target {
        Target::Id(id) => vec![id.to_hex()],
        Target::Prefix(p) => vec![p.as_str().to_string()],
        Target::Name(n) => vec![n.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: u8, names: &[&str]) -> P2pHit {
        P2pHit {
            id: FileId([id; 32]).to_hex(),
            name: names[0].into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            size: 1,
            sources: vec!["a:1".into()],
        }
    }

    #[test]
    fn hits_resolve_by_any_name_id_or_prefix() {
        let hits = vec![
            hit(0xab, &["Movie.2023.mkv", "alpha-release.mkv"]),
            hit(0xac, &["cafe\u{301}.txt"]),
        ];
        let t = |s: &str| s.parse::<Target>().unwrap();
        let (_, c) = resolve_in_hits(&t("ALPHA-release.mkv"), &hits, 7).unwrap();
        assert_eq!(
            (c.id, c.name.as_str()),
            (FileId([0xab; 32]), "alpha-release.mkv")
        );
        let (_, c) = resolve_in_hits(&t("caf\u{e9}.txt"), &hits, 7).unwrap();
        assert_eq!(c.id, FileId([0xac; 32]));
        let (_, c) = resolve_in_hits(&t("acacacac"), &hits, 7).unwrap();
        assert_eq!(c.name, "cafe\u{301}.txt");
        assert!(matches!(
            resolve_in_hits(&t("nothing"), &hits, 7),
            Err(ResolveError::NotFound { .. })
        ));
        let mut twins = hits.clone();
        twins.push(hit(0xad, &["dir/caf\u{e9}.TXT"]));
        let err = resolve_in_hits(&t("caf\u{e9}.txt"), &twins, 7).unwrap_err();
        assert!(
            matches!(&err, ResolveError::Ambiguous { candidates, .. } if candidates.len() == 2)
        );
        assert!(
            err.to_string().contains(&FileId([0xad; 32]).to_hex()),
            "{err}"
        );
    }
}
