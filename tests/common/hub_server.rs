#![allow(dead_code)]
//! A local stand-in for the Hugging Face hub on 127.0.0.1, for tests and the download benchmark.
//! It speaks enough HTTP/1.1 for perceptio's client: the revision API, `resolve` URLs with ETag /
//! X-Repo-Commit / X-Linked-Etag / X-Linked-Size, LFS redirects to a second path, Range requests
//! answered with 206 + Content-Range, auth for gated repos, and injected faults.

use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    /// A large file on disk (the benchmark's 1 GiB file), with its sha256 precomputed.
    File(PathBuf, u64, String),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n, _) => *n,
        }
    }
}

#[derive(Clone)]
pub struct HubFile {
    pub name: String,
    pub body: Body,
    pub lfs: bool,
}

impl HubFile {
    pub fn new(name: &str, bytes: Vec<u8>, lfs: bool) -> Self {
        HubFile {
            name: name.into(),
            body: Body::Bytes(Arc::new(bytes)),
            lfs,
        }
    }
    pub fn sha256(&self) -> String {
        match &self.body {
            Body::Bytes(b) => format!("{:x}", sha2::Sha256::digest(b.as_slice())),
            Body::File(_, _, s) => s.clone(),
        }
    }
    pub fn git_sha1(&self) -> String {
        let Body::Bytes(b) = &self.body else {
            panic!("git files are small")
        };
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", b.len()).as_bytes());
        h.update(b.as_slice());
        format!("{:x}", h.finalize())
    }
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

#[derive(Clone, Default)]
pub struct HubRepo {
    /// revision name (branch/tag) → commit
    pub refs: HashMap<String, String>,
    /// commit → files
    pub commits: HashMap<String, Vec<HubFile>>,
    pub gated_token: Option<String>,
}

/// Faults to inject, keyed by file name.
#[derive(Default)]
pub struct Faults {
    /// Close the connection after this many body bytes, on the first GET of the file only.
    pub drop_after: HashMap<String, u64>,
    /// Serve a body with one byte flipped, always.
    pub corrupt: Vec<String>,
    /// Sleep this long between 64 KiB chunks of this file's body.
    pub throttle: HashMap<String, Duration>,
    /// Answer the next N requests for this file with 503.
    pub unavailable: HashMap<String, u32>,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub api_calls: u32,
    pub heads: u32,
    /// GETs that sent file bytes, with the Range start they asked for.
    pub body_gets: Vec<(String, u64)>,
}

pub struct HubServer {
    pub url: String,
    pub stats: Arc<Mutex<Stats>>,
    pub faults: Arc<Mutex<Faults>>,
    repos: Arc<Mutex<HashMap<String, HubRepo>>>,
}

impl HubServer {
    pub fn start(repos: HashMap<String, HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stats = Arc::new(Mutex::new(Stats::default()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let repos = Arc::new(Mutex::new(repos));
        let (s, f, r) = (stats.clone(), faults.clone(), repos.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, f, r) = (s.clone(), f.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &s, &f, &r);
                });
            }
        });
        HubServer {
            url,
            stats,
            faults,
            repos,
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    pub fn body_gets_of(&self, file: &str) -> Vec<u64> {
        self.stats()
            .body_gets
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, r)| *r)
            .collect()
    }
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        h.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes())?;
    if !head {
        conn.write_all(body)?;
    }
    conn.flush()
}

fn handle(
    mut conn: TcpStream,
    stats: &Mutex<Stats>,
    faults: &Mutex<Faults>,
    repos: &Mutex<HashMap<String, HubRepo>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let head = method == "HEAD";
    let auth = headers.get("authorization").cloned();
    let range_from: u64 = headers
        .get("range")
        .and_then(|r| {
            r.strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0);
    let repos = repos.lock().unwrap().clone();
    let gated = |repo: &HubRepo| {
        repo.gated_token
            .as_ref()
            .is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}")))
    };

    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        stats.lock().unwrap().api_calls += 1;
        let segs: Vec<&str> = rest.splitn(4, '/').collect();
        if segs.len() == 4 && segs[2] == "revision" {
            let id = format!("{}/{}", segs[0], segs[1]);
            let rev = segs[3].replace("%2F", "/");
            let Some(repo) = repos.get(&id) else {
                return respond(
                    &mut conn,
                    "401 Unauthorized",
                    &[],
                    b"{\"error\":\"Repository not found\"}",
                    head,
                );
            };
            if gated(repo) {
                return respond(&mut conn, "401 Unauthorized", &[], b"{\"error\":\"gated\"}", head);
            }
            let commit = repo
                .refs
                .get(&rev)
                .cloned()
                .or_else(|| repo.commits.contains_key(&rev).then(|| rev.clone()));
            let Some(commit) = commit else {
                return respond(
                    &mut conn,
                    "404 Not Found",
                    &[("X-Error-Code", "RevisionNotFound".into())],
                    b"{\"error\":\"Revision not found\"}",
                    head,
                );
            };
            let siblings: Vec<serde_json::Value> = repo.commits[&commit]
                .iter()
                .map(|f| serde_json::json!({"rfilename": f.name}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({"id": id, "sha": commit, "siblings": siblings})).unwrap();
            return respond(
                &mut conn,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                &body,
                head,
            );
        }
        return respond(&mut conn, "404 Not Found", &[], b"", head);
    }
    // /lfs-cdn/{sha256}: the LFS storage the resolve URL redirects to
    if let Some(sha) = path.strip_prefix("/lfs-cdn/") {
        let file = repos
            .values()
            .flat_map(|r| r.commits.values().flatten())
            .find(|f| f.lfs && f.sha256() == sha)
            .cloned();
        return match file {
            Some(f) => serve_body(&mut conn, &f, range_from, head, stats, faults, &[]),
            None => respond(&mut conn, "404 Not Found", &[], b"", head),
        };
    }
    // /{org}/{name}/resolve/{rev}/{path}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() == 5 && segs[2] == "resolve" {
        let id = format!("{}/{}", segs[0], segs[1]);
        let Some(repo) = repos.get(&id) else {
            return respond(&mut conn, "401 Unauthorized", &[], b"", head);
        };
        if gated(repo) {
            return respond(&mut conn, "401 Unauthorized", &[], b"", head);
        }
        let rev = segs[3].replace("%2F", "/");
        let commit = repo.refs.get(&rev).cloned().unwrap_or(rev);
        let Some(files) = repo.commits.get(&commit) else {
            return respond(&mut conn, "404 Not Found", &[], b"", head);
        };
        let name = segs[4];
        let Some(f) = files.iter().find(|f| f.name == name).cloned() else {
            return respond(
                &mut conn,
                "404 Not Found",
                &[("X-Error-Code", "EntryNotFound".into())],
                b"",
                head,
            );
        };
        {
            let mut fl = faults.lock().unwrap();
            if let Some(n) = fl.unavailable.get_mut(name).filter(|n| **n > 0) {
                *n -= 1;
                return respond(&mut conn, "503 Service Unavailable", &[], b"", head);
            }
        }
        if head {
            stats.lock().unwrap().heads += 1;
        }
        let common = vec![("X-Repo-Commit", commit.clone())];
        if f.lfs {
            let mut h = common;
            h.push(("X-Linked-Etag", format!("\"{}\"", f.sha256())));
            h.push(("X-Linked-Size", f.body.len().to_string()));
            h.push(("ETag", format!("\"{}\"", f.git_sha1_or_pointer())));
            h.push(("Location", format!("/lfs-cdn/{}", f.sha256())));
            return respond(&mut conn, "302 Found", &h, b"", head);
        }
        let mut h = common;
        h.push(("ETag", format!("\"{}\"", f.git_sha1())));
        return serve_body(&mut conn, &f, range_from, head, stats, faults, &h);
    }
    respond(&mut conn, "404 Not Found", &[], b"", head)
}

impl HubFile {
    /// The ETag of an LFS file's pointer (what `ETag` carries next to `X-Linked-Etag`).
    fn git_sha1_or_pointer(&self) -> String {
        format!(
            "{:x}",
            sha1::Sha1::digest(format!("pointer {}", self.sha256()).as_bytes())
        )
    }
}

fn serve_body(
    conn: &mut TcpStream,
    f: &HubFile,
    from: u64,
    head: bool,
    stats: &Mutex<Stats>,
    faults: &Mutex<Faults>,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let len = f.body.len();
    if from > len || (from == len && len > 0) {
        return respond(
            conn,
            "416 Range Not Satisfiable",
            &[("Content-Range", format!("bytes */{len}"))],
            b"",
            head,
        );
    }
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    headers.push(("Accept-Ranges", "bytes".into()));
    headers.push(("Content-Length", (len - from).to_string()));
    let status = if from > 0 {
        headers.push(("Content-Range", format!("bytes {from}-{}/{len}", len.saturating_sub(1))));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in &headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    conn.write_all(h.as_bytes())?;
    if head {
        return Ok(());
    }
    stats.lock().unwrap().body_gets.push((f.name.clone(), from));
    let (drop_after, corrupt, throttle) = {
        let mut fl = faults.lock().unwrap();
        (
            fl.drop_after.remove(&f.name),
            fl.corrupt.contains(&f.name),
            fl.throttle.get(&f.name).copied(),
        )
    };
    let limit = drop_after.map(|d| d.max(from)).unwrap_or(len);
    let mut pos = from;
    let mut send = |chunk: &[u8], pos: &mut u64| -> std::io::Result<bool> {
        let room = (limit - *pos) as usize;
        let n = chunk.len().min(room);
        let mut c = chunk[..n].to_vec();
        if corrupt && *pos == from && !c.is_empty() {
            c[0] ^= 0xff;
        }
        conn.write_all(&c)?;
        *pos += n as u64;
        if let Some(t) = throttle {
            std::thread::sleep(t);
        }
        Ok(*pos < limit)
    };
    match &f.body {
        Body::Bytes(b) => {
            for chunk in b[from as usize..].chunks(64 << 10) {
                if !send(chunk, &mut pos)? {
                    break;
                }
            }
        }
        Body::File(p, _, _) => {
            let mut file = std::fs::File::open(p)?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 || !send(&buf[..n], &mut pos)? {
                    break;
                }
            }
        }
    }
    conn.flush()?;
    if drop_after.is_some() {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}
