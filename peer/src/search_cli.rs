//! `peer search`: its filters, and how an answer is printed.

use clap::Args;
use common::index_proto::{SearchFilter, SearchHit, Source};
use common::search::FileKind;
use peer::index_client::{IndexClient, IndexError, SearchAnswer};

use crate::cli_output;

/// The matching rules, for `peer search --help`.
pub const SEARCH_HELP: &str = "\
Matching: each WORD finds names with a word starting with it (`mon` finds \
`Blue Monday.mp3`, `big` finds `big50.bin`); a 1-character WORD only finds \
that whole word (`Vol 2`), as a 1-letter prefix would match a twentieth of \
everything. Case, accents and Unicode forms are ignored (`beyonce` finds \
`Beyoncé`, `strasse` finds `Straße`, `lodz` finds `Łódź`), and so are \
apostrophes inside words (`dont` finds `Don't`). Chinese, Japanese and Thai: \
2 or more characters find names holding that sequence (`千尋` finds \
`千と千尋の神隠し.mkv`). Every WORD must match; `-WORD` (or --exclude WORD) \
excludes names with a word starting with it. Whole-word matches come first, then files with more sources, then \
shorter names.

Filters run at the index, before --limit (with --mode p2p, on the nodes' \
answers): --min-size/--max-size (10MB, 1GiB), \
--ext mp3,flac, --type audio|video|image|document|archive|program:
  audio     mp3 flac ogg oga opus wav aac m4a wma aiff aif ape alac mid midi mka
  video     mkv mp4 avi mov wmv webm m4v mpg mpeg flv ogv ts 3gp vob
  image     jpg jpeg png gif bmp webp tif tiff svg heic raw psd ico
  document  pdf txt md doc docx odt rtf epub mobi xls xlsx ods ppt pptx odp csv html htm tex djvu
  archive   zip rar 7z tar gz tgz bz2 xz zst tar.gz tar.bz2 tar.xz tar.zst iso
  program   exe msi dmg pkg deb rpm apk appimage jar bin sh bat com

Examples:
  peer search blue mon                 Blue Monday.mp3, Blue Monday (live).ogg
  peer search queen -live --type audio studio recordings of Queen only
  peer search --min-size 1GiB --ext mkv,mp4 千尋
  peer search --json --limit 1000 dont   {total, truncated, total_exact, results}";

/// Filters of `peer search`, applied at the index (or, with `--mode p2p`,
/// to the answers of the overlay's nodes).
#[derive(Args, Debug, Clone, Default)]
pub struct SearchFilterArgs {
    /// Only files of at least this size (10MB, 1GiB, 500k, plain bytes).
    #[arg(long, env = "PEER_MIN_SIZE", value_name = "SIZE", value_parser = size)]
    pub min_size: Option<u64>,
    /// Only files of at most this size.
    #[arg(long, env = "PEER_MAX_SIZE", value_name = "SIZE", value_parser = size)]
    pub max_size: Option<u64>,
    /// Only these extensions, comma-separated (mp3,flac; case and a leading
    /// dot ignored).
    #[arg(long, env = "PEER_EXT", value_name = "EXT,...", value_delimiter = ',', value_parser = extension)]
    pub ext: Vec<String>,
    /// Only these kinds of file, comma-separated: audio, video, image,
    /// document, archive, program (extension table below).
    #[arg(long = "type", env = "PEER_TYPE", value_name = "KIND,...", value_delimiter = ',', value_parser = kind)]
    pub kinds: Vec<KindArg>,
}

/// A `--type` value.
#[derive(Debug, Clone, Copy)]
pub struct KindArg(pub FileKind);

fn size(s: &str) -> Result<u64, String> {
    common::units::parse_size(s).map_err(|e| e.to_string())
}

fn extension(s: &str) -> Result<String, String> {
    let e = s.trim().trim_start_matches('.').to_lowercase();
    if e.is_empty() || e.len() > common::names::MAX_EXTENSION_LEN || e.contains(['/', ' ']) {
        return Err(format!(
            "an extension is 1 to {} bytes without spaces (mp3, tar.gz)",
            common::names::MAX_EXTENSION_LEN
        ));
    }
    Ok(e)
}

fn kind(s: &str) -> Result<KindArg, String> {
    FileKind::parse(s).map(KindArg).ok_or_else(|| {
        let names: Vec<&str> = FileKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown type {s:?}: one of {}", names.join(", "))
    })
}

impl SearchFilterArgs {
    /// The filter to send: `--ext` and every `--type`'s extensions.
    pub fn filter(&self) -> Result<SearchFilter, String> {
        if let (Some(min), Some(max)) = (self.min_size, self.max_size) {
            if min > max {
                return Err(format!(
                    "--min-size ({min} bytes) is larger than --max-size ({max} bytes)"
                ));
            }
        }
        let mut exts: Vec<String> = self.ext.clone();
        for k in &self.kinds {
            exts.extend(k.0.extensions().iter().map(|e| e.to_string()));
        }
        exts.sort();
        exts.dedup();
        if exts.len() > common::search::MAX_FILTER_EXTENSIONS {
            return Err(format!(
                "at most {} extensions in all",
                common::search::MAX_FILTER_EXTENSIONS
            ));
        }
        Ok(SearchFilter {
            min_size: self.min_size,
            max_size: self.max_size,
            exts,
        })
    }
}

/// The command line with `peer search`'s `-WORD`s turned into
/// `--exclude=WORD` (clap would read `-live` as the flags `-l -i -v -e`).
/// Only after `search`, not `-h`, and not after `--` (where
/// `common::search::Query::parse` reads `-WORD` as an exclusion anyway).
pub fn exclusions_as_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut in_search = false;
    let mut words_only = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 1 && arg == "search" {
            in_search = true;
        } else if in_search && !words_only {
            if arg == "--" {
                words_only = true;
            } else if let Some(word) = arg
                .to_str()
                .and_then(|a| a.strip_prefix('-'))
                .filter(|w| !w.is_empty() && !w.starts_with('-') && *w != "h")
            {
                out.push(format!("--exclude={word}").into());
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// `4312` → `"4,312"`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The live sources of each hit, in the hits' order (`--sources`): one
/// `Lookup` per hit on `client`'s connection. A file whose last source left
/// between the search and its lookup gets an empty list.
pub async fn sources_of(
    client: &mut IndexClient,
    hits: &[SearchHit],
) -> Result<Vec<Vec<Source>>, IndexError> {
    let mut all = Vec::with_capacity(hits.len());
    for hit in hits {
        let found = client.lookup(hit.id).await?;
        all.push(found.map(|(_, _, sources)| sources).unwrap_or_default());
    }
    Ok(all)
}

/// The JSON of an index search: `{total, truncated, total_exact, results}`
/// (`total` is null when an older index did not count); with `sources`
/// (`--sources`, one list per hit), each result also has
/// `source_list: [{nick, addr, peer_id}]`.
pub fn answer_json(answer: &SearchAnswer, sources: Option<&[Vec<Source>]>) -> serde_json::Value {
    let mut results = cli_output::hits_json(&answer.hits);
    if let (Some(sources), Some(list)) = (sources, results.as_array_mut()) {
        for (result, sources) in list.iter_mut().zip(sources) {
            result["source_list"] = cli_output::sources_json(sources);
        }
    }
    serde_json::json!({
        "total": answer.total,
        "truncated": answer.truncated,
        "total_exact": answer.total_exact,
        "results": results,
    })
}

/// Says on stderr "showing 100 of 4,312 matching files" when the list is
/// cut, with what to do to see more.
pub fn note_cut(shown: usize, total: Option<u64>, exact: bool, limit: u32) {
    let max = common::limits::MAX_SEARCH_LIMIT;
    let more = if limit < max {
        format!("raise --limit (at most {max}) or add words to see the rest")
    } else {
        format!("add words or filters to narrow the search (the index sends at most {max})")
    };
    match total {
        Some(total) if total > shown as u64 => {
            let about = if exact { "" } else { "about " };
            errln!(
                "showing {shown} of {about}{} matching files; {more}",
                thousands(total)
            );
        }
        None if shown as u64 >= u64::from(limit) => {
            errln!("showing the first {shown} matching files, there may be more; {more}");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(4312), "4,312");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn minus_words_become_exclusions_in_search_only() {
        let args = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
        assert_eq!(
            exclusions_as_flags(args(&[
                "peer", "search", "queen", "-live", "--index", "x", "-h"
            ])),
            args(&[
                "peer",
                "search",
                "queen",
                "--exclude=live",
                "--index",
                "x",
                "-h"
            ])
        );
        assert_eq!(
            exclusions_as_flags(args(&["peer", "search", "a", "--", "-b"])),
            args(&["peer", "search", "a", "--", "-b"])
        );
        assert_eq!(
            exclusions_as_flags(args(&["peer", "get", "-o", "x"])),
            args(&["peer", "get", "-o", "x"])
        );
    }

    /// The table in `--help` is the one the filter uses.
    #[test]
    fn help_lists_each_type_extensions() {
        for k in FileKind::ALL {
            let line = format!("  {:<9} {}", k.name(), k.extensions().join(" "));
            assert!(SEARCH_HELP.contains(&line), "{line}");
        }
    }
}
