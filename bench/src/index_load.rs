//! The index server as a separate process under load, beside a bare echo
//! server over the same framing, both measured in the same run; with
//! `--baseline PATH` also an older `index-server` binary (the exact-word
//! index before issue 13), measured alternately with the current one over
//! the same names and queries.
//!
//! **Names** ([`names`]): a deterministic generator of realistic shared
//! names (splitmix64 seeded by the file number): 40 % music (`Artist -
//! Title (year).mp3`, `NN Title.flac`), 20 % video (`Title.year.1080p.mkv`),
//! 15 % photos (`IMG_20190704_123456.jpg`), 10 % documents (`Title vN.pdf`),
//! 5 % archives and programs, and 10 % Chinese or Japanese titles (a run of
//! 2 to 8 characters from 300 common kanji and kana, then a number or a
//! Latin word). Words are drawn from about 4,000: 200 real ones (English,
//! Spanish, French, German, with their accents: `corazón`, `été`, `Straße`,
//! `Don't`) and syllable-made ones, with a skewed (about Zipf) frequency, so
//! a few words are in many names and most are rare; numbers (years, track
//! numbers, dates, resolutions) make about one word per name unique.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::hello::Protocol;
use common::id::FileId;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// Pipelined requests per connection (the field notes measured echo with 16).
const DEPTH: usize = 16;

/// splitmix64: a fast, well-spread deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Skewed towards 0: about Zipf over `n`.
    fn skewed(&mut self, n: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((n as f64).powf(u) - 1.0) as usize % n
    }
}

const REAL_WORDS: &[&str] = &[
    "love",
    "song",
    "night",
    "day",
    "monday",
    "blue",
    "live",
    "remix",
    "mix",
    "dance",
    "heart",
    "world",
    "time",
    "life",
    "dream",
    "fire",
    "rain",
    "summer",
    "winter",
    "light",
    "dark",
    "home",
    "road",
    "city",
    "girl",
    "boy",
    "baby",
    "star",
    "sun",
    "moon",
    "sky",
    "sea",
    "river",
    "king",
    "queen",
    "black",
    "white",
    "red",
    "gold",
    "silver",
    "wild",
    "free",
    "forever",
    "never",
    "again",
    "tonight",
    "morning",
    "evening",
    "party",
    "club",
    "radio",
    "edit",
    "original",
    "version",
    "acoustic",
    "unplugged",
    "demo",
    "session",
    "concert",
    "tour",
    "album",
    "single",
    "best",
    "hits",
    "greatest",
    "collection",
    "anthology",
    "vol",
    "part",
    "chapter",
    "episode",
    "season",
    "series",
    "movie",
    "film",
    "documentary",
    "trailer",
    "holiday",
    "wedding",
    "birthday",
    "family",
    "vacation",
    "beach",
    "mountain",
    "lecture",
    "notes",
    "report",
    "thesis",
    "paper",
    "manual",
    "guide",
    "tutorial",
    "slides",
    "invoice",
    "resume",
    "backup",
    "project",
    "draft",
    "final",
    "setup",
    "installer",
    "update",
    "patch",
    "driver",
    "game",
    "Don't",
    "I'm",
    "can't",
    "won't",
    "it's",
    "rock'n'roll",
    "corazón",
    "canción",
    "mañana",
    "niño",
    "amor",
    "vida",
    "noche",
    "música",
    "fiesta",
    "español",
    "día",
    "sueño",
    "ciudad",
    "été",
    "café",
    "résumé",
    "déjà",
    "vu",
    "français",
    "chanson",
    "cœur",
    "élève",
    "hôtel",
    "Straße",
    "Über",
    "schön",
    "Mädchen",
    "Grüße",
    "Köln",
    "Øresund",
    "Ærøskøbing",
    "Łódź",
    "Kraków",
    "Beyoncé",
    "Björk",
    "Motörhead",
    "Sigur",
    "Rós",
    "Mötley",
    "Crüe",
    "naïve",
    "façade",
    "piñata",
    "jalapeño",
    "São",
    "Paulo",
    "Zürich",
    "München",
    "Malmö",
    "Tromsø",
    "Ísland",
    "Dvořák",
    "Smetana",
    "Chopin",
    "Mozart",
    "Beethoven",
    "Bach",
    "Vivaldi",
    "symphony",
    "concerto",
    "sonata",
    "quartet",
    "opus",
    "major",
    "minor",
    "prelude",
    "nocturne",
    "waltz",
    "march",
    "suite",
    "overture",
    "requiem",
    "mass",
    "the",
    "of",
    "and",
    "in",
    "on",
    "my",
    "your",
    "with",
    "for",
    "from",
    "to",
    "a",
    "la",
    "el",
    "le",
    "de",
    "der",
    "die",
    "das",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ren", "tor", "sa", "vel", "an", "do", "ri", "mar", "te", "zu", "bel", "os",
    "in", "ga", "pe", "lu", "mon", "tra", "es", "cor", "di", "na", "vi", "ro", "len", "ar", "si",
];

const CJK: &str = "千と尋の神隠し天空城ラピュタ風谷ナウシカ魔女宅急便紅豚もののけ姫猫恋愛夏冬春秋月星海山川花雨雪夜朝東京大阪京都北海道日本中国上海北京台湾香港人生歌手音楽映画電影第一二三四五六七八九十話集版完全字幕高清中文愛情青春物語世界戦争平和家族友達学校先生私僕君彼女彼心夢希望未来過去時間空気光影色白黒赤青緑金銀新旧古今生死命運的了是我你他她们这那有在不会和说个上下来去大小多少好坏长短开关ありがとうさようならこんにちはおはようすきだいすきしあわせアニメゲームドラマライブコンサートベストアルバムシングルリミックスカバー";

fn pseudo_word(k: usize) -> String {
    let mut w = String::new();
    let mut k = k + 31;
    while k > 0 {
        w.push_str(SYLLABLES[k % SYLLABLES.len()]);
        k /= SYLLABLES.len();
    }
    w
}

/// The vocabulary: real words first (the most frequent), then made ones.
fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = REAL_WORDS.iter().map(|w| w.to_string()).collect();
    v.extend((0..3800).map(pseudo_word));
    v
}

fn capital(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `min` to `min + spread - 1` capitalised words, skewed towards the
/// frequent ones, joined by `sep`.
fn title(r: &mut Rng, vocab: &[String], min: usize, spread: usize, sep: &str) -> String {
    let n = min + r.below(spread);
    (0..n)
        .map(|_| capital(&vocab[r.skewed(vocab.len())]))
        .collect::<Vec<_>>()
        .join(sep)
}

/// The name of file `i` (see the module docs).
fn name(i: usize, vocab: &[String], cjk: &[char]) -> String {
    let mut r = Rng(i as u64 ^ 0x5eed);
    let r = &mut r;
    match r.below(100) {
        0..=29 => {
            let artist = title(r, vocab, 1, 2, " ");
            let song = title(r, vocab, 1, 4, " ");
            format!("{artist} - {song} ({}).mp3", 1960 + r.below(65))
        }
        30..=39 => {
            let track = 1 + r.below(20);
            let song = title(r, vocab, 1, 4, " ");
            let kbps = [128, 192, 256, 320][r.below(4)];
            format!("{track:02} {song} [{kbps}kbps].flac")
        }
        40..=59 => {
            let film = title(r, vocab, 1, 3, ".");
            let year = 1970 + r.below(55);
            let res = ["720p", "1080p", "2160p", "480p"][r.below(4)];
            format!("{film}.{year}.{res}.x264-{i:x}.mkv")
        }
        60..=74 => format!(
            "IMG_{}{:02}{:02}_{:06}.jpg",
            2005 + r.below(20),
            1 + r.below(12),
            1 + r.below(28),
            r.below(1_000_000)
        ),
        75..=84 => {
            let doc = title(r, vocab, 2, 4, " ");
            format!("{doc} v{}.{}.pdf", 1 + r.below(9), r.below(100))
        }
        85..=89 => {
            let prog = title(r, vocab, 1, 2, " ");
            let ext = ["zip", "tar.gz", "exe", "iso", "7z"][r.below(5)];
            format!(
                "{prog}-{}.{}.{}.{ext}",
                r.below(10),
                r.below(30),
                r.below(300)
            )
        }
        _ => {
            let len = 2 + r.below(7);
            let run: String = (0..len).map(|_| cjk[r.skewed(cjk.len())]).collect();
            match r.below(3) {
                0 => format!("{run} \u{7b2c}{}\u{8a71}.mkv", 1 + r.below(50)),
                1 => format!("{run} - {}.mp3", title(r, vocab, 1, 1, " ")),
                _ => format!("{run}{}.mp4", 1990 + r.below(35)),
            }
        }
    }
}

/// Files 0..n, each with a distinct id, its generated name and a size.
fn generate(n: usize) -> Vec<SharedFile> {
    let vocab = vocabulary();
    let cjk: Vec<char> = CJK.chars().collect();
    (0..n)
        .map(|i| {
            let mut id = [0u8; 32];
            let mut r = Rng(i as u64);
            for chunk in id.chunks_mut(8) {
                chunk.copy_from_slice(&r.next().to_le_bytes());
            }
            SharedFile {
                id: FileId(id),
                name: name(i, &vocab, &cjk),
                size: 1 + (Rng(!(i as u64)).next() % (1 << 32)),
            }
        })
        .collect()
}

/// Spawns a child that logs or prints `addr=HOST:PORT`, and returns it with that address.
pub fn spawn_with_addr(mut cmd: Command, from_stderr: bool) -> anyhow::Result<(Child, String)> {
    let mut child = if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?
    };
    let reader: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = std::io::BufReader::new(reader).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("child exited before saying its address")??;
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap_or("").to_string();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

struct Conn {
    reader: BufReader<transfer::net::ConnReader>,
    writer: BufWriter<transfer::net::ConnWriter>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (s, _) = transfer::net::client(s, Protocol::Index, None).await?;
        let (r, w) = s.into_split();
        Ok(Conn {
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
            buf: Vec::new(),
        })
    }

    /// Sends `n` requests already encoded as frames in `frames`, and reads
    /// their `n` answers.
    async fn pipelined_raw(
        &mut self,
        frames: &[u8],
        n: usize,
    ) -> anyhow::Result<Vec<IndexResponse>> {
        self.writer.write_all(frames).await?;
        self.answers(n).await
    }

    async fn pipelined(&mut self, requests: &[IndexRequest]) -> anyhow::Result<Vec<IndexResponse>> {
        for r in requests {
            wire::write_message(&mut self.writer, r).await?;
        }
        self.answers(requests.len()).await
    }

    /// Flushes what was written and reads `n` answers.
    async fn answers(&mut self, n: usize) -> anyhow::Result<Vec<IndexResponse>> {
        self.writer.flush().await?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(
                wire::expect_message(
                    &mut self.reader,
                    &mut self.buf,
                    Deadlines::with_idle(Duration::from_secs(60)),
                )
                .await?,
            );
        }
        Ok(out)
    }
}

/// Pipelined lookup rate with `clients` connections for `duration`.
async fn rate(
    addr: &str,
    clients: usize,
    duration: Duration,
    ids: Arc<Vec<FileId>>,
) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let start = Instant::now();
            let mut done = 0u64;
            let mut i = c * 7919;
            while start.elapsed() < duration {
                let batch: Vec<IndexRequest> = (0..DEPTH)
                    .map(|k| {
                        i = (i + 104_729 + k) % ids.len().max(1);
                        IndexRequest::Lookup { id: ids[i] }
                    })
                    .collect();
                conn.pipelined(&batch).await?;
                done += DEPTH as u64;
            }
            anyhow::Ok((done, start.elapsed().as_secs_f64()))
        }));
    }
    let mut total = 0.0;
    for t in tasks {
        let (n, secs) = t.await??;
        total += n as f64 / secs;
    }
    Ok(total)
}

/// Query sets, drawn from the generated names (so each finds something at
/// the current index).
struct Queries {
    /// Two whole words of one name: the common query (exact words work on both).
    common: Vec<Vec<String>>,
    /// The first 3 characters of two words of one name.
    prefix2: Vec<Vec<String>>,
    /// The 2-letter prefix that the most names have a word starting with.
    short: Vec<String>,
    short_files: usize,
    /// 2 characters of a Chinese/Japanese run.
    cjk: Vec<Vec<String>>,
}

fn words_of(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    common::search::for_each_piece(&common::search::fold(name), |p| {
        if let common::search::Piece::Word(w) = p {
            if w.chars().count() >= 3 && !w.chars().all(|c| c.is_ascii_digit()) {
                out.push(w.to_string());
            }
        }
    });
    out.sort();
    out.dedup();
    out
}

fn queries(files: &[SharedFile]) -> Queries {
    let mut r = Rng(42);
    let mut common = Vec::new();
    let mut prefix2 = Vec::new();
    let mut cjk = Vec::new();
    while common.len() < 2000 || prefix2.len() < 2000 || cjk.len() < 1000 {
        let name = &files[r.below(files.len())].name;
        let words = words_of(name);
        if words.len() >= 2 {
            let (a, b) = (&words[r.below(words.len())], &words[r.below(words.len())]);
            if a != b {
                if common.len() < 2000 {
                    common.push(vec![a.clone(), b.clone()]);
                }
                if prefix2.len() < 2000 {
                    let p = |w: &str| w.chars().take(3).collect::<String>();
                    prefix2.push(vec![p(a), p(b)]);
                }
            }
        }
        let chars: Vec<char> = name
            .chars()
            .take_while(|c| common::search::is_unspaced(*c))
            .collect();
        if chars.len() >= 2 && cjk.len() < 1000 {
            let at = r.below(chars.len() - 1);
            cjk.push(vec![chars[at..at + 2].iter().collect()]);
        }
    }
    // The most common 2-letter prefix of words (ASCII letters).
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for f in files {
        let mut seen = std::collections::HashSet::new();
        common::search::for_each_piece(&common::search::fold(&f.name), |p| {
            if let common::search::Piece::Word(w) = p {
                if w.len() >= 2 && w.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
                    seen.insert(w[..2].to_string());
                }
            }
        });
        for s in seen {
            *counts.entry(s).or_default() += 1;
        }
    }
    let (short, short_files) = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap_or_default();
    Queries {
        common,
        prefix2,
        short: vec![short],
        short_files,
        cjk,
    }
}

/// p50 and p99 of sequential searches, in ms, and the mean hits returned.
async fn latencies(
    conn: &mut Conn,
    queries: &[Vec<String>],
    n: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut times = Vec::with_capacity(n);
    let mut hits = 0usize;
    for q in 0..n {
        let words = queries[q % queries.len()].clone();
        let t = Instant::now();
        let r = conn
            .pipelined(&[IndexRequest::Search { words, limit: 100 }])
            .await?;
        times.push(t.elapsed());
        if let Some(IndexResponse::SearchResults { hits: h }) = r.first() {
            hits += h.len();
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        ms(times[n / 2]),
        ms(times[n * 99 / 100]),
        hits as f64 / n as f64,
    ))
}

/// Everything measured on one server.
#[derive(Default, Clone)]
struct Figures {
    reg_rate: f64,
    per_file: f64,
    lookups: f64,
    lookups_loaded: f64,
    common: (f64, f64, f64),
    prefix2: (f64, f64, f64),
    short: (f64, f64, f64),
    cjk: (f64, f64, f64),
}

async fn measure(
    server: &std::path::Path,
    files: Arc<Vec<SharedFile>>,
    queries: &Queries,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let mut index_cmd = Command::new(server);
    index_cmd
        .args(["--listen", "127.0.0.1:0", "--lease-ttl", "1h"])
        .env("RUST_LOG", "info");
    let (mut index, addr) = spawn_with_addr(index_cmd, true)
        .with_context(|| format!("start {} (build it first)", server.display()))?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes(index.id())?;

    // Registration: 8 sessions, batches of 512, 16 batches pipelined. The
    // sessions log in and every frame is encoded before the clock starts:
    // the figure is the server's rate, not this client's cloning and
    // encoding (which took more CPU than the server's work on 2 cores).
    let sessions = 8;
    let mut prepared = Vec::new();
    for s in 0..sessions {
        let mut conn = Conn::open(&addr).await?;
        conn.pipelined(&[IndexRequest::Login(Login {
            listen_port: 7000 + s as u16,
            advertise: None,
            nick: None,
        })])
        .await?;
        let mine: Vec<usize> = (s..files.len()).step_by(sessions).collect();
        let mut names = 0u64;
        let mut groups: Vec<(Vec<u8>, usize)> = Vec::new();
        for group in mine.chunks(512 * 16) {
            let mut frames = Vec::new();
            let mut n = 0;
            for b in group.chunks(512) {
                let req = IndexRequest::AddFiles {
                    files: b.iter().map(|&i| files[i].clone()).collect(),
                };
                frames.extend(common::frame::encode_frame(&req)?);
                n += 1;
            }
            groups.push((frames, n));
            names += group
                .iter()
                .map(|&i| files[i].name.len() as u64)
                .sum::<u64>();
        }
        prepared.push((conn, groups, names));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut conn, groups, names) in prepared {
        tasks.push(tokio::spawn(async move {
            for (frames, n) in &groups {
                for r in conn.pipelined_raw(frames, *n).await? {
                    anyhow::ensure!(
                        matches!(r, IndexResponse::Ack { .. }),
                        "registration refused: {r:?}"
                    );
                }
            }
            anyhow::Ok((conn, names))
        }));
    }
    let mut held = Vec::new();
    let mut name_bytes = 0;
    for t in tasks {
        let (conn, names) = t.await??;
        held.push(conn);
        name_bytes += names;
    }
    let reg_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = rss_bytes(index.id())?;
    let n = files.len();
    let per_file = (rss_after
        .saturating_sub(rss_before)
        .saturating_sub(name_bytes)) as f64
        / n as f64;

    let ids: Arc<Vec<FileId>> = Arc::new(files.iter().map(|f| f.id).collect());
    let lookups = rate(&addr, clients, duration, ids.clone()).await?;
    // The same lookups while two clients search for the heaviest query.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut searchers = Vec::new();
    for _ in 0..2 {
        let addr = addr.clone();
        let stop = stop.clone();
        let words = queries.short.clone();
        searchers.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.pipelined(&[IndexRequest::Search {
                    words: words.clone(),
                    limit: 100,
                }])
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    let lookups_loaded = rate(&addr, clients, duration, ids).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in searchers {
        s.await??;
    }

    let mut conn = Conn::open(&addr).await?;
    let cpu = crate::transfer_bench::child_cpu_secs(index.id());
    let t = Instant::now();
    let common = latencies(&mut conn, &queries.common, 2000).await?;
    eprintln!(
        "  common query: server CPU {:.3} ms a query, wall {:.3} ms a query",
        (crate::transfer_bench::child_cpu_secs(index.id()) - cpu) * 1e3 / 2000.0,
        t.elapsed().as_secs_f64() * 1e3 / 2000.0
    );
    let prefix2 = latencies(&mut conn, &queries.prefix2, 2000).await?;
    let short = latencies(&mut conn, std::slice::from_ref(&queries.short), 300).await?;
    let cjk = latencies(&mut conn, &queries.cjk, 1000).await?;

    drop(held);
    let _ = index.kill();
    let _ = index.wait();
    Ok(Figures {
        reg_rate: n as f64 / reg_secs,
        per_file,
        lookups,
        lookups_loaded,
        common,
        prefix2,
        short,
        cjk,
    })
}

pub async fn run(
    files: usize,
    clients: usize,
    duration: Duration,
    baseline: Option<std::path::PathBuf>,
    rounds: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let current = dir.join("index-server");
    let t = Instant::now();
    let generated = Arc::new(generate(files));
    let queries = queries(&generated);
    let name_bytes: usize = generated.iter().map(|f| f.name.len()).sum();
    eprintln!(
        "{files} names generated in {:.1} s ({:.1} bytes a name on average); `{}` is in {} names",
        t.elapsed().as_secs_f64(),
        name_bytes as f64 / files.max(1) as f64,
        queries.short[0],
        queries.short_files
    );

    let mut echo_cmd = Command::new(&exe);
    echo_cmd.arg("echo-server");
    let (mut echo, echo_addr) = spawn_with_addr(echo_cmd, false)?;
    let ids: Arc<Vec<FileId>> = Arc::new(generated.iter().map(|f| f.id).collect());
    let echo_rate = rate(&echo_addr, clients, duration, ids).await?;
    let _ = echo.kill();
    let _ = echo.wait();

    let mut servers: Vec<(&str, std::path::PathBuf)> = Vec::new();
    if let Some(b) = &baseline {
        servers.push(("baseline (exact words)", b.clone()));
    }
    servers.push(("this build (prefixes)", current));
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); servers.len()];
    // Alternate the servers, round after round (the machine is shared).
    for round in 0..rounds {
        for (k, (label, path)) in servers.iter().enumerate() {
            eprintln!("round {}: {label}", round + 1);
            results[k].push(measure(path, generated.clone(), &queries, clients, duration).await?);
        }
    }

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let cell = |k: usize, f: &dyn Fn(&Figures) -> f64, fmt: &dyn Fn(f64) -> String| {
        let v: Vec<f64> = results[k].iter().map(f).collect();
        let each: Vec<String> = v.iter().map(|x| fmt(*x)).collect();
        if v.len() > 1 {
            format!("{} ({})", fmt(median(&v)), each.join(", "))
        } else {
            fmt(v[0])
        }
    };
    let ms = |x: f64| format!("{x:.2} ms");
    let per_s = |x: f64| format!("{x:.0} /s");
    let bytes = |x: f64| format!("{x:.0} B");
    let ratio = |x: f64| format!("{x:.2}");
    type Row<'a> = (
        &'a str,
        Box<dyn Fn(&Figures) -> f64>,
        &'a dyn Fn(f64) -> String,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        (
            "registration, 8 sessions x batches of 512",
            Box::new(|f: &Figures| f.reg_rate),
            &per_s,
            "target >= 500,000 /s",
        ),
        (
            "index memory per file beyond names (RSS delta)",
            Box::new(|f: &Figures| f.per_file),
            &bytes,
            "target <= 128 B",
        ),
        (
            "lookups, no search load",
            Box::new(|f: &Figures| f.lookups),
            &per_s,
            "",
        ),
        (
            "lookups, while 2 clients search the 2-letter prefix",
            Box::new(|f: &Figures| f.lookups_loaded),
            &per_s,
            "",
        ),
        (
            "lookups under search load / without",
            Box::new(|f: &Figures| f.lookups_loaded / f.lookups),
            &ratio,
            "target >= 0.80",
        ),
        (
            "common query, 2 whole words, p50",
            Box::new(|f: &Figures| f.common.0),
            &ms,
            "target p50 < 1 ms",
        ),
        (
            "common query, 2 whole words, p99",
            Box::new(|f: &Figures| f.common.1),
            &ms,
            "target p99 < 10 ms",
        ),
        (
            "  mean hits returned",
            Box::new(|f: &Figures| f.common.2),
            &ratio,
            "",
        ),
        (
            "2-word prefix query (3 letters each), p50",
            Box::new(|f: &Figures| f.prefix2.0),
            &ms,
            "",
        ),
        (
            "2-word prefix query (3 letters each), p99",
            Box::new(|f: &Figures| f.prefix2.1),
            &ms,
            "target p99 < 10 ms",
        ),
        (
            "  mean hits returned",
            Box::new(|f: &Figures| f.prefix2.2),
            &ratio,
            "",
        ),
        (
            "1-word 2-letter prefix, p50",
            Box::new(|f: &Figures| f.short.0),
            &ms,
            "",
        ),
        (
            "1-word 2-letter prefix, p99",
            Box::new(|f: &Figures| f.short.1),
            &ms,
            "target p99 < 10 ms",
        ),
        (
            "  mean hits returned",
            Box::new(|f: &Figures| f.short.2),
            &ratio,
            "",
        ),
        (
            "CJK 2-character query, p50",
            Box::new(|f: &Figures| f.cjk.0),
            &ms,
            "",
        ),
        (
            "CJK 2-character query, p99",
            Box::new(|f: &Figures| f.cjk.1),
            &ms,
            "target p99 < 10 ms",
        ),
        (
            "  mean hits returned",
            Box::new(|f: &Figures| f.cjk.2),
            &ratio,
            "",
        ),
    ];
    println!(
        "{files} files ({:.1} B names), {clients} lookup clients x {DEPTH} pipelined, {rounds} round(s) alternating; echo on the same framing {echo_rate:.0} /s; 2-letter prefix `{}` is in {} names",
        name_bytes as f64 / files.max(1) as f64,
        queries.short[0],
        queries.short_files
    );
    let header: Vec<&str> = servers.iter().map(|(l, _)| *l).collect();
    println!("| figure | {} | target |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(servers.len()));
    for (label, f, fmt, target) in &rows {
        let cells: Vec<String> = (0..servers.len())
            .map(|k| cell(k, f.as_ref(), fmt))
            .collect();
        println!("| {label} | {} | {target} |", cells.join(" | "));
    }
    Ok(())
}

/// A bare echo server on the protocol's framing: hello, then one small
/// answer per request frame, flushed like the index server does.
pub async fn echo_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("echo server addr={}", listener.local_addr()?);
    loop {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            let (_, s) = transfer::net::accept(s, &[Protocol::Index], |_| false, |_| 0).await?;
            let (r, w) = s.into_split();
            let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
            let mut buf = Vec::new();
            while let Some(req) =
                wire::read_message::<_, IndexRequest>(&mut r, &mut buf, Deadlines::default())
                    .await?
            {
                std::hint::black_box(req);
                wire::write_message(&mut w, &IndexResponse::Ack { count: 0 }).await?;
                if r.buffer().is_empty() {
                    w.flush().await?;
                }
            }
            anyhow::Ok(())
        });
    }
}

/// The index's search alone, in this process (no network, no other load):
/// registers `files` generated names with 8 sessions, then times each
/// query set (those whose label contains `only`, if given) `repeat`
/// times over, and prints p50/p99 and the mean number
/// of candidates' matches (`total`). For profiling the search itself
/// (`perf record` on this process), not a figure for docs/benchmarks.md.
pub fn search_in_process(files: usize, repeat: usize, only: Option<&str>) -> anyhow::Result<()> {
    use index_server::state::Index;
    let generated = generate(files);
    let queries = queries(&generated);
    let now = tokio::time::Instant::now();
    let index = Index::new(Duration::from_secs(3600));
    let sessions: Vec<_> = (0..8)
        .map(|s| index.login(format!("127.0.0.1:{}", 7000 + s), None, now))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for (i, batch) in generated.chunks(512).enumerate() {
        index.add_files(sessions[i % 8], batch.to_vec(), now)?;
    }
    eprintln!(
        "{files} files registered in process at {:.0} files/s",
        files as f64 / t.elapsed().as_secs_f64()
    );
    let sets: [(&str, Vec<Vec<String>>); 4] = [
        ("common query, 2 whole words", queries.common.clone()),
        ("2-word prefix query", queries.prefix2.clone()),
        ("1-word 2-letter prefix", vec![queries.short.clone()]),
        ("CJK 2-character query", queries.cjk.clone()),
    ];
    for (label, set) in sets {
        if only.is_some_and(|o| !label.contains(o)) {
            continue;
        }
        let n = set.len().max(300) * repeat;
        let mut times = Vec::with_capacity(n);
        let mut total = 0u64;
        for q in 0..n {
            let words = &set[q % set.len()];
            let t = Instant::now();
            let query = common::search::Query::parse(words)
                .map_err(|e| anyhow::anyhow!("query {words:?}: {e:?}"))?;
            let found = index.search_query(
                &query,
                &common::index_proto::SearchFilter::default(),
                100,
                now,
            );
            times.push(t.elapsed());
            total += found.total;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        eprintln!(
            "{label}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean total {:.0}",
            ms(times[n / 2]),
            ms(times[n * 9 / 10]),
            ms(times[n * 99 / 100]),
            ms(times[n - 1]),
            total as f64 / n as f64
        );
    }
    Ok(())
}
