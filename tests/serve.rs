//! `perceptio serve` against real HTTP clients: the real binary on a free loopback port with the
//! tiny Perceptio checkpoint (Sa2VA + depth tokens, assembled as tests/depth_cli.rs does), its
//! answers compared with the CLI's `--json` for the same photo and request.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use base64::Engine;
use common::{fixture, run, stderr, stdout};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The tiny Perceptio checkpoint (Sa2VA layout + depth tokens), assembled once per run under
/// target/tmp so that the CLI answers every test compares with are computed once.
fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-model");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        sa2va::assemble(&d);
        sa2va::add_depth_tokens(&d);
        d
    })
}

/// The server's runtime flags, also given to every CLI call it is compared with.
const RT: [&str; 4] = ["--max-tiles", "2", "--max-new-tokens", "24"];

struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Server {
    /// Start `perceptio serve --port 0` and wait for the address it prints.
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceptio"));
        cmd.args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(RT)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn perceptio serve");
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                if let Some(i) = line.find("listening on http://") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start: {}", log.lock().unwrap());
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Server {
            child,
            base,
            log,
            agent,
        }
    }

    /// POST a body; the status, the `x-perceptio-batch` header (0 when absent) and the JSON body.
    fn post(&self, path: &str, body: &str) -> (u16, usize, Value) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let group = r
            .headers()
            .get("x-perceptio-batch")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let text = r.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
        (status, group, v)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self.agent.get(format!("{}{path}", self.base)).call().unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap(),
        )
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status (within 60 s).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn terminate(&mut self) -> ExitStatus {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(p: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
}

/// The CLI's `--json` objects (one per line or one pretty object) of `args` + `--model` + `rt`
/// (default: the server's runtime flags); each distinct call is run once per test run.
fn cli(args: &[&str], rt: Option<&[&str]>) -> Vec<Value> {
    static DONE: OnceLock<Mutex<HashMap<Vec<String>, Vec<Value>>>> = OnceLock::new();
    let mut a: Vec<&str> = args.to_vec();
    a.extend_from_slice(&["--model", model().to_str().unwrap(), "--json"]);
    a.extend_from_slice(rt.unwrap_or(&RT));
    let key: Vec<String> = a.iter().map(|s| s.to_string()).collect();
    let mut done = DONE.get_or_init(Default::default).lock().unwrap();
    if let Some(v) = done.get(&key) {
        return v.clone();
    }
    let r = run(&a, None);
    assert!(matches!(r.status.code(), Some(0 | 3)), "{a:?}: {}", stderr(&r));
    let text = stdout(&r);
    let v: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect();
    done.insert(key, v.clone());
    v
}

/// Everything but the timings (and, for bytes sent as base64, the photo's name: `-` here, the
/// path in the CLI); the answers must agree on every other field.
fn comparable(mut v: Value, keep_image: bool) -> Value {
    let o = v.as_object_mut().expect("an object");
    assert!(o.remove("timings").is_some(), "no timings in {o:?}");
    if !keep_image {
        o.remove("image");
    }
    v
}

fn assert_same(got: &Value, want: &Value, keep_image: bool, what: &str) {
    assert_eq!(
        comparable(got.clone(), keep_image),
        comparable(want.clone(), keep_image),
        "{what}: the server's answer differs from the CLI's --json"
    );
}

/// Every endpoint answers exactly the CLI's `--json` object (bar timings), photos by bytes or
/// by path under --allow-dir; /health names the model and the queue.
#[test]
fn answers_equal_the_cli_json() {
    let m = model();
    let images = fixture("images");
    let chelsea = fixture("images/chelsea.png");
    let portrait = fixture("images/coffee_portrait.png");
    let s = Server::start(m, &["--allow-dir", images.to_str().unwrap()]);

    let (st, h) = s.get("/health");
    assert_eq!(st, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["model"].as_str().unwrap(), m.to_str().unwrap());
    assert_eq!(h["device"], "Cpu");
    assert_eq!(h["dtype"], "f32");
    assert_eq!(h["queue"], 0);
    assert_eq!(h["endpoints"], json!({"segment": true, "ask": true, "depth": true}));

    // segment, forced and generated, two expressions in one request.
    for force in [true, false] {
        let body = json!({"image": b64(&chelsea), "expressions": ["the cat", "the whiskers"], "force_seg": force});
        let (st, _, got) = s.post("/v1/segment", &body.to_string());
        assert_eq!(st, 200, "{got}");
        let mut args = vec!["segment", chelsea.to_str().unwrap(), "the cat", "the whiskers"];
        if force {
            args.push("--force-seg");
        }
        let want = cli(&args, None);
        let got = got.as_array().expect("an array, one object per expression");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["image"], "-");
        for (g, w) in got.iter().zip(&want) {
            assert_same(g, w, false, &format!("segment force={force}"));
        }
        if force {
            assert!(got[0]["area"].as_u64().unwrap() > 0, "a forced [SEG] gives a mask");
        }
    }
    // The same photo by path, absolute and relative to --allow-dir: named as the CLI names it.
    let want = cli(
        &[
            "segment",
            chelsea.to_str().unwrap(),
            "the cat",
            "the whiskers",
            "--force-seg",
        ],
        None,
    );
    let (st, _, got) = s.post(
        "/v1/segment",
        &json!({"image_path": chelsea, "expressions": ["the cat", "the whiskers"], "force_seg": true}).to_string(),
    );
    assert_eq!(st, 200, "{got}");
    assert_same(&got[0], &want[0], true, "segment by image_path");
    assert_same(&got[1], &want[1], true, "segment by image_path");
    let (st, _, rel) = s.post(
        "/v1/segment",
        &json!({"image_path": "chelsea.png", "expressions": ["the cat"], "force_seg": true}).to_string(),
    );
    assert_eq!(st, 200, "{rel}");
    assert_eq!(rel[0]["image"], "chelsea.png");
    assert_same(&rel[0], &want[0], false, "segment by a relative image_path");

    // ask, with the request's token budget.
    let (st, _, got) = s.post(
        "/v1/ask",
        &json!({"image": b64(&portrait), "question": "What is in the picture?", "max_new_tokens": 10}).to_string(),
    );
    assert_eq!(st, 200, "{got}");
    // The CLI with the request's budget (RT's --max-new-tokens is the server's cap).
    let p = portrait.to_str().unwrap();
    let want = cli(
        &["ask", p, "What is in the picture?"],
        Some(&["--max-tiles", "2", "--max-new-tokens", "10"]),
    );
    assert!(got["tokens_generated"].as_u64().unwrap() <= 10, "{got}");
    assert_same(&got, &want[0], true, "ask");

    // depth, generated and with the start marker forced.
    for force in [false, true] {
        let (st, _, got) = s.post(
            "/v1/depth",
            &json!({"image": b64(&chelsea), "force_depth": force}).to_string(),
        );
        assert_eq!(st, 200, "{got}");
        let mut args = vec!["depth", chelsea.to_str().unwrap()];
        if force {
            args.push("--force-depth");
        }
        let want = cli(&args, None);
        if force {
            assert_eq!(got["tokens"].as_array().unwrap().len(), 9, "{got}");
        }
        let keep = got.get("timings").is_some();
        if keep {
            assert_same(&got, &want[0], false, &format!("depth force={force}"));
        } else {
            // No usable block: the CLI's error object, which has no timings.
            let mut w = want[0].clone();
            w.as_object_mut().unwrap().remove("image");
            let mut g = got.clone();
            g.as_object_mut().unwrap().remove("image");
            assert_eq!(g, w, "depth force={force}");
        }
    }
    let log = s.log();
    assert!(log.contains("POST /v1/segment 200"), "{log}");
    assert!(log.contains("GET /health 200"), "{log}");
}

/// ≥ 200 requests from 8 concurrent clients: no failures, every answer the CLI's, and
/// concurrent requests are served in groups. Mostly `ask` with a short reply (on the debug build
/// each SAM2 mask decode takes ~0.15 s, which would make the test long), every tenth a segment.
#[test]
fn load_test_200_requests_from_8_clients() {
    let m = model();
    let chelsea = fixture("images/chelsea.png");
    let portrait = fixture("images/coffee_portrait.png");
    let s = Arc::new(Server::start(m, &[]));
    let q = "Where is the cat?";
    let short = ["--max-tiles", "2", "--max-new-tokens", "4"];
    let want = Arc::new([
        cli(&["ask", chelsea.to_str().unwrap(), q], Some(&short)).remove(0),
        cli(&["ask", portrait.to_str().unwrap(), q], Some(&short)).remove(0),
        cli(
            &[
                "segment",
                chelsea.to_str().unwrap(),
                "the cat",
                "the whiskers",
                "--force-seg",
            ],
            None,
        )
        .remove(0),
    ]);
    let bodies = Arc::new([
        json!({"image": b64(&chelsea), "question": q, "max_new_tokens": 4}).to_string(),
        json!({"image": b64(&portrait), "question": q, "max_new_tokens": 4}).to_string(),
        json!({"image": b64(&chelsea), "expressions": ["the cat"], "force_seg": true}).to_string(),
    ]);
    // Warm the server's caches for both photos (the CLI paid the same once per call).
    for k in [1, 2] {
        let path = if k == 2 { "/v1/segment" } else { "/v1/ask" };
        assert_eq!(s.post(path, &bodies[k]).0, 200);
    }
    let t = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|c| {
            let (s, bodies, want) = (s.clone(), bodies.clone(), want.clone());
            std::thread::spawn(move || {
                let mut groups = Vec::new();
                for i in 0..25 {
                    let k = if (c * 25 + i) % 10 == 0 { 2 } else { (c + i) % 2 };
                    let path = if k == 2 { "/v1/segment" } else { "/v1/ask" };
                    let (st, group, v) = s.post(path, &bodies[k]);
                    assert_eq!(st, 200, "{v}");
                    let got = if k == 2 { &v[0] } else { &v };
                    assert_same(got, &want[k], false, "load test");
                    groups.push(group);
                }
                groups
            })
        })
        .collect();
    let groups: Vec<usize> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} requests in {secs:.2} s ({:.0}/s)",
        groups.len(),
        groups.len() as f64 / secs
    );
    assert_eq!(groups.len(), 200);
    assert!(
        groups.iter().any(|&g| g > 1),
        "8 concurrent clients were never served as a group"
    );
    let (_, h) = s.get("/health");
    assert_eq!(h["served"], 202);
    assert_eq!(h["queue"], 0);
}

/// Bad requests get their status and a JSON error, and none of them stops the server: 413 over
/// --max-body, 400 for garbage, 403 outside --allow-dir (`..`, absolute, symlinks), 404 missing,
/// 429 with the queue full.
#[test]
fn bad_requests_get_their_status_and_the_server_goes_on() {
    let m = model();
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = allowed.path();
    std::fs::copy(fixture("images/chelsea.png"), root.join("chelsea.png")).unwrap();
    std::fs::write(root.join("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::copy(fixture("images/coffee_portrait.png"), outside.path().join("secret.png")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.png"), root.join("link.png")).unwrap();
    let s = Server::start(
        m,
        &[
            "--allow-dir",
            root.to_str().unwrap(),
            "--max-body",
            "4096",
            "--queue",
            "1",
        ],
    );
    let err = |path: &str, body: &str, status: u16, needle: &str| {
        let (st, _, v) = s.post(path, body);
        assert_eq!(st, status, "{body:.80}: {v}");
        let e = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
        assert!(e.contains(needle), "{body:.80}: {e:?} should mention {needle:?}");
    };
    let seg = |p: &str| json!({"image_path": p, "expressions": ["the cat"]}).to_string();
    // 413: a body over --max-body, bytes or path alike.
    let big = json!({"image": "A".repeat(8000), "expressions": ["x"]}).to_string();
    err("/v1/segment", &big, 413, "max-body");
    err("/v1/segment", &seg("chelsea.png"), 413, "max-body");
    // 400: not JSON, not an object, missing or unknown fields, bad base64, not an image.
    err("/v1/segment", "{not json", 400, "not JSON");
    err("/v1/ask", "[1, 2]", 400, "object");
    err("/v1/segment", r#"{"image": "aGk="}"#, 400, "expressions");
    err("/v1/ask", r#"{"question": "hi"}"#, 400, "image");
    err(
        "/v1/ask",
        r#"{"image": "aGk=", "question": "hi", "colour": 1}"#,
        400,
        "colour",
    );
    err(
        "/v1/segment",
        r#"{"image": "%%%", "expressions": ["x"]}"#,
        400,
        "base64",
    );
    err(
        "/v1/segment",
        r#"{"image": "aGk=", "expressions": ["x"]}"#,
        400,
        "image",
    );
    err("/v1/segment", r#"{"image": "aGk=", "expressions": []}"#, 400, "empty");
    err(
        "/v1/segment",
        r#"{"image": "aGk=", "expressions": [" "]}"#,
        400,
        "empty",
    );
    err(
        "/v1/ask",
        r#"{"image": "aGk=", "question": "hi", "max_new_tokens": 100000}"#,
        400,
        "max_new_tokens",
    );
    err(
        "/v1/depth",
        &json!({"image_path": "corrupt.png"}).to_string(),
        400,
        "corrupt.png",
    );
    // A PNG header claiming a photo over the pixel limit is refused before decoding.
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bomb.extend_from_slice(&100_000u32.to_be_bytes());
    bomb.extend_from_slice(&100_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let bomb = base64::engine::general_purpose::STANDARD.encode(&bomb);
    err("/v1/depth", &json!({"image": bomb}).to_string(), 400, "limit");
    // 403: out of --allow-dir by `..`, by an absolute path, by a symlink inside pointing out.
    err("/v1/segment", &seg("../secret.png"), 403, "outside");
    err(
        "/v1/segment",
        &seg(outside.path().join("secret.png").to_str().unwrap()),
        403,
        "outside",
    );
    err("/v1/segment", &seg("link.png"), 403, "outside");
    err("/v1/segment", &seg("missing.png"), 404, "missing.png");
    let (st, v) = s.get("/nowhere");
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.get("/v1/segment");
    assert_eq!(st, 405, "{v}");
    assert!(v["error"].is_string());

    // 429: with --queue 1 and requests that keep the model busy, some are turned away.
    let t = Instant::now();
    let s = Arc::new(s);
    let tiny = tiny_png();
    let body = Arc::new(json!({"image": tiny, "question": "Describe the picture.", "max_new_tokens": 24}).to_string());
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (s, body) = (s.clone(), body.clone());
            std::thread::spawn(move || {
                let (st, _, v) = s.post("/v1/ask", &body);
                (st, v)
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let full = results.iter().filter(|(st, _)| *st == 429).count();
    let ok = results.iter().filter(|(st, _)| *st == 200).count();
    assert_eq!(full + ok, 16, "only 200 or 429: {results:?}");
    assert!(full > 0, "16 concurrent requests never filled a queue of 1");
    assert!(ok > 0);
    for (st, v) in &results {
        if *st == 429 {
            assert!(v["error"].as_str().unwrap().contains("queue is full"), "{v}");
        }
    }
    eprintln!(
        "429 test: {ok} served, {full} turned away in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Still serving.
    let (st, _, v) = s.post("/v1/ask", &body);
    assert_eq!(st, 200, "{v}");
    let (_, h) = s.get("/health");
    assert_eq!(h["queue"], 0);
}

/// A photo small enough for --max-body 4096, as base64.
fn tiny_png() -> String {
    let img = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 128]));
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(buf.into_inner())
}

/// Without --allow-dir, `image_path` is refused with 403 and a message saying why.
#[test]
fn image_paths_need_allow_dir() {
    let s = Server::start(model(), &[]);
    let chelsea = fixture("images/chelsea.png");
    let (st, _, v) = s.post(
        "/v1/segment",
        &json!({"image_path": chelsea, "expressions": ["the cat"]}).to_string(),
    );
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--allow-dir"), "{v}");
}

/// SIGTERM while a request is being served: that request still gets its full answer, then the
/// process exits 0 and the port is closed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let m = model();
    let chelsea = fixture("images/chelsea.png");
    let mut s = Server::start(m, &[]);
    let want = cli(
        &[
            "segment",
            chelsea.to_str().unwrap(),
            "the cat",
            "the whiskers",
            "--force-seg",
        ],
        None,
    );
    // A photo the server has not encoded yet, and several expressions, keep the worker busy.
    let exprs: Vec<&str> = ["the cat", "the whiskers"].repeat(3);
    let body = json!({"image": b64(&chelsea), "expressions": exprs, "force_seg": true}).to_string();
    let agent = s.agent.clone();
    let url = format!("{}/v1/segment", s.base);
    let client = std::thread::spawn(move || {
        let mut r = agent.post(&url).send(&body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    // Wait until the worker has the request.
    let t = Instant::now();
    loop {
        let (_, h) = s.get("/health");
        if h["in_flight"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the request never reached the worker"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let base = s.base.clone();
    let status = s.terminate();
    let (st, text) = client.join().unwrap();
    assert_eq!(st, 200, "{text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 6);
    for (i, g) in got.iter().enumerate() {
        assert_same(g, &want[i % 2], false, "the answer finished after SIGTERM");
    }
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("shutting down"), "{}", s.log());
    let addr = base.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after exit"
    );
}
